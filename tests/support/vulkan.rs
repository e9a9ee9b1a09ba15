//! The one rule for Vulkan tests on a machine without a Vulkan device: they fail, unless
//! the user set `PHOTOFINISH_ALLOW_NO_VULKAN=1`, in which case they say they were skipped
//! and return. A machine without a driver never passes Vulkan tests silently.
#![allow(dead_code)]

use std::fmt::Display;

use photofinish::{BackendChoice, Engine};

/// `Some(value)` when the device opened; `None` (after saying so) when it did not and
/// skipping is allowed; a failing test otherwise.
pub fn require<T, E: Display>(opened: Result<T, E>) -> Option<T> {
    match opened {
        Ok(value) => Some(value),
        Err(e) => {
            skip_or_fail(&e);
            None
        }
    }
}

/// Returns when skipping is allowed (after printing `SKIPPED`); panics otherwise.
pub fn skip_or_fail(why: &dyn Display) {
    if std::env::var("PHOTOFINISH_ALLOW_NO_VULKAN").as_deref() == Ok("1") {
        eprintln!("SKIPPED: no Vulkan device ({why}); PHOTOFINISH_ALLOW_NO_VULKAN=1 is set");
    } else {
        panic!(
            "no Vulkan device: {why}\nThese tests need one (lavapipe is enough: Debian \
             `mesa-vulkan-drivers libvulkan1`); set PHOTOFINISH_ALLOW_NO_VULKAN=1 to skip them."
        );
    }
}

/// An engine on `backend` with no autotune file; `None` (after saying so) where the
/// backend has no device and skipping is allowed, a failing test otherwise.
pub fn engine_on(backend: BackendChoice) -> Option<Engine> {
    require(
        Engine::builder()
            .backend(backend)
            .without_autotune_file()
            .build(),
    )
}
