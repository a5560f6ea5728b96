//! The local executor: each stage a child process of the runner (through `mpirun -np N` for several
//! ranks), its stdout and stderr teed into its log, its end sent back over a channel.

use super::log::{last_state, Echo, Tail};
use super::{Ended, Launch};
use crate::error::{PipelineError, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The stages running as children of this process.
pub struct Local {
    tx: Sender<Ended>,
    rx: Receiver<Ended>,
    /// Stage index → pid.
    pids: BTreeMap<usize, u32>,
}

impl Default for Local {
    fn default() -> Self {
        let (tx, rx) = channel();
        Local {
            tx,
            rx,
            pids: BTreeMap::new(),
        }
    }
}

/// `mpirun -np N ` for a stage on several ranks, else nothing.
pub fn launcher(ranks: usize) -> String {
    match ranks {
        1 => String::new(),
        n => format!("mpirun -np {n} "),
    }
}

impl Local {
    pub fn running(&self) -> usize {
        self.pids.len()
    }

    /// Starts the stage. Must be called from the thread that lives as long as the run (the main
    /// thread): a child is killed when the thread that started it ends.
    pub fn start(&mut self, l: &Launch, log: std::fs::File) -> Result<()> {
        let mut child = spawn(l)?;
        self.pids.insert(l.index, child.id());
        let tee = Tee::start(&mut child, log, l.echo.clone());
        let (tx, index) = (self.tx.clone(), l.index);
        std::thread::spawn(move || {
            let tail = tee.finish();
            let failure = match child.wait() {
                Ok(s) if s.success() => None,
                Ok(s) => Some(describe(s)),
                Err(e) => Some(format!("could not be waited for: {e}")),
            };
            let _ = tx.send(Ended {
                index,
                failure,
                tail,
                note: None,
                slurm_job: None,
            });
        });
        Ok(())
    }

    /// The stages that ended within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Vec<Ended> {
        let mut out = Vec::new();
        match self.rx.recv_timeout(timeout) {
            Ok(e) => out.push(e),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        while let Ok(e) = self.rx.try_recv() {
            out.push(e);
        }
        for e in &out {
            self.pids.remove(&e.index);
        }
        out
    }

    /// Sends SIGTERM to every running stage and waits for them to end (SIGKILL after `grace`); the
    /// indices of the stages that were running.
    pub fn terminate(&mut self, grace: Duration) -> Vec<usize> {
        let stopped: Vec<usize> = self.pids.keys().copied().collect();
        self.signal_all(libc::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while !self.pids.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                self.signal_all(libc::SIGKILL);
                self.wait(Duration::from_secs(5));
                break;
            }
            self.wait(left.min(Duration::from_millis(200)));
        }
        stopped
    }

    #[allow(unsafe_code)]
    fn signal_all(&self, signal: i32) {
        for &pid in self.pids.values() {
            // SAFETY: kill(2) on a child we have not reaped (its waiter reports before we forget it).
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(c) => format!("exit code {c}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            format!("killed by signal {}", status.signal().unwrap_or(0))
        }
    }
}

fn spawn(l: &Launch) -> Result<Child> {
    let st = l.stage;
    let mut cmd = match st.ranks {
        1 => Command::new(l.binary),
        n => {
            let mut c = Command::new("mpirun");
            c.args(["-np", &n.to_string()]).arg(l.binary);
            c
        }
    };
    cmd.args(&st.argv)
        .current_dir(l.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    cmd.spawn().map_err(|e| {
        let what = match st.ranks {
            1 => l.binary.display().to_string(),
            n => format!(
                "mpirun for its {n} ranks (install Open MPI: tools/install-mpi.sh, and build the stages with \
                 --features zerolm-train/mpi)"
            ),
        };
        PipelineError::StageFailed(format!("stage `{}`: cannot start {what}: {e}", st.name))
    })
}

/// The threads copying a child's stdout and stderr into its log (and our stderr), keeping the last lines.
struct Tee {
    pumps: Vec<std::thread::JoinHandle<()>>,
    tail: Arc<Mutex<Tail>>,
}

impl Tee {
    fn start(child: &mut Child, log: std::fs::File, echo: Echo) -> Tee {
        let log = Arc::new(Mutex::new(log));
        let tail = Arc::new(Mutex::new(Tail::default()));
        let pumps = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let (log, tail, echo) = (log.clone(), tail.clone(), echo.clone());
            std::thread::spawn(move || pump(stream, &log, &tail, &echo))
        })
        .collect();
        Tee { pumps, tail }
    }

    /// Waits for the streams to end; the last lines of output.
    fn finish(self) -> Vec<String> {
        for t in self.pumps {
            let _ = t.join();
        }
        let tail = self.tail.lock().expect("tail");
        tail.lines()
    }
}

fn pump(stream: Box<dyn Read + Send>, log: &Mutex<std::fs::File>, tail: &Mutex<Tail>, echo: &Echo) {
    let reader = BufReader::new(stream);
    for chunk in reader.split(b'\n') {
        let Ok(bytes) = chunk else { break };
        let line = last_state(&bytes);
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{line}");
        }
        echo.line(&line);
        tail.lock().expect("tail").push(line);
    }
}

/// On Linux the stage is killed when the pipeline dies (even by SIGKILL), so a killed pipeline never
/// leaves a stage writing its outputs behind a later run's back.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}
