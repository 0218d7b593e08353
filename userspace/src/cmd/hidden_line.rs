//! One line typed at a terminal without echoing it: a secret typed in
//! plain sight stays on the screen, in the terminal's scrollback and in
//! whatever records the session.

use std::io::{self, Write as _};

use zeroize::Zeroize as _;

/// Turns echo off on standard input (a terminal) while alive, and back
/// to what it was when dropped. Newlines still echo (`ECHONL`), so the
/// prompt's line ends when the value does.
struct EchoOff {
    saved: libc::termios,
}

impl EchoOff {
    fn new() -> io::Result<EchoOff> {
        // SAFETY: termios is plain data; tcgetattr fills it on success.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr on standard input writes `saved`, which lives
        // across the call.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL | libc::ICANON;
        // SAFETY: tcsetattr reads `quiet`, which lives across the call.
        // TCSAFLUSH drops what was typed ahead, while it still echoed.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EchoOff { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`. If this process is
        // killed first (Ctrl-C), the shell restores the terminal of a job
        // that a signal ended.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSAFLUSH, &self.saved) };
    }
}

/// Prints `prompt` on standard error and reads one line from standard
/// input, a terminal, with echo off. The line ends at Enter, which is not
/// part of it, or at end of input (Ctrl-D). Read straight from the
/// descriptor, so no buffer of the standard library keeps a copy.
pub fn read(prompt: &str) -> io::Result<Vec<u8>> {
    let _echo_off = EchoOff::new()?;
    let mut err = io::stderr().lock();
    err.write_all(prompt.as_bytes())?;
    err.flush()?;
    // Room for any token, so that growing leaves no copy behind.
    let mut line = Vec::with_capacity(8192);
    let mut chunk = [0u8; 256];
    loop {
        // SAFETY: read(2) into a stack buffer of the length given.
        let n = unsafe { libc::read(libc::STDIN_FILENO, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            line.zeroize();
            chunk.zeroize();
            return Err(error);
        }
        let n = n as usize;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&chunk[..n]);
        if line.last() == Some(&b'\n') {
            line.pop();
            break;
        }
    }
    chunk.zeroize();
    Ok(line)
}
