//! The output of ranks other than 0: a data-parallel run prints its log, progress and summary once
//! (rank 0); the other ranks print only their errors.

#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

/// Points this process's stdout and stderr at `/dev/null` and returns the original stderr, for errors.
pub fn silence() -> std::io::Result<File> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: dup/dup2 on file descriptors this process owns; the duplicate is owned by the returned
    // File from here on.
    unsafe {
        let saved = libc::dup(2);
        if saved < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for fd in [1, 2] {
            if libc::dup2(null.as_raw_fd(), fd) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(File::from_raw_fd(saved))
    }
}
