//! Mapping vulkano's errors onto [`BackendError`], and the per-device "lost" flag.
//!
//! Out-of-memory (host or device) becomes `OutOfDeviceMemory`, a lost device
//! `DeviceLost`; everything else keeps vulkano's text in `Vulkan`. Validation errors
//! that a caller can cause are checked (and typed) before vulkano sees the call, so a
//! validation error reaching this module is a driver-level surprise, not a user error.

use vulkano::buffer::AllocateBufferError;
use vulkano::command_buffer::CommandBufferExecError;
use vulkano::memory::allocator::MemoryAllocatorError;
use vulkano::{Validated, VulkanError};

use crate::backend::BackendError;
use crate::sync::{AtomicBool, Ordering};

/// Set once a device is lost; never cleared (the engine must be restarted).
#[derive(Debug, Default)]
pub(super) struct DeviceFlag(AtomicBool);

impl DeviceFlag {
    pub(super) fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub(super) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A plain Vulkan error on `device`; `bytes` is the allocation size where one was made.
pub(super) fn vulkan_error(device: usize, bytes: u64, e: VulkanError) -> BackendError {
    match e {
        VulkanError::OutOfDeviceMemory | VulkanError::OutOfHostMemory => {
            BackendError::OutOfDeviceMemory { device, bytes }
        }
        VulkanError::DeviceLost => BackendError::DeviceLost {
            device,
            detail: e.to_string(),
        },
        other => BackendError::Vulkan(other.to_string()),
    }
}

/// A vulkano result error on `device`.
pub(super) fn vk_error(device: usize, bytes: u64, e: Validated<VulkanError>) -> BackendError {
    match e {
        Validated::Error(e) => vulkan_error(device, bytes, e),
        Validated::ValidationError(v) => BackendError::Vulkan(v.to_string()),
    }
}

/// A failed buffer allocation of `bytes` on `device`.
pub(super) fn alloc_error(
    device: usize,
    bytes: u64,
    e: Validated<AllocateBufferError>,
) -> BackendError {
    match e {
        Validated::Error(AllocateBufferError::CreateBuffer(e))
        | Validated::Error(AllocateBufferError::BindMemory(e)) => vulkan_error(device, bytes, e),
        Validated::Error(AllocateBufferError::AllocateMemory(m)) => match m {
            MemoryAllocatorError::AllocateDeviceMemory(e) => vk_error(device, bytes, e),
            MemoryAllocatorError::OutOfPoolMemory => {
                BackendError::OutOfDeviceMemory { device, bytes }
            }
            other => BackendError::Vulkan(format!("allocating {bytes} bytes: {other}")),
        },
        Validated::ValidationError(v) => {
            BackendError::Vulkan(format!("allocating {bytes} bytes: {v}"))
        }
    }
}

/// A command buffer that could not be submitted (a resource still in use elsewhere).
pub(super) fn exec_error(device: usize, e: CommandBufferExecError) -> BackendError {
    BackendError::Vulkan(format!("submitting on device {device}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_and_device_lost_are_typed() {
        for e in [VulkanError::OutOfDeviceMemory, VulkanError::OutOfHostMemory] {
            assert_eq!(
                vulkan_error(2, 64, e),
                BackendError::OutOfDeviceMemory {
                    device: 2,
                    bytes: 64
                }
            );
        }
        assert!(matches!(
            vulkan_error(1, 0, VulkanError::DeviceLost),
            BackendError::DeviceLost { device: 1, .. }
        ));
        assert!(matches!(
            vk_error(0, 0, Validated::Error(VulkanError::InitializationFailed)),
            BackendError::Vulkan(_)
        ));
    }

    #[test]
    fn the_lost_flag_stays_set() {
        let flag = DeviceFlag::default();
        assert!(!flag.is_set());
        flag.set();
        assert!(flag.is_set());
    }
}
