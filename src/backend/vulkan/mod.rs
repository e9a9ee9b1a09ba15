//! The Vulkan backend (being written).
