//! Durable file writes with group commit: definitions (`<config_dir>/domains/<name>.xml`)
//! and live statuses (`<state_dir>/domains/<uuid>.json`) each go through one [`CommitLog`].
//!
//! A change must be durable before the client is answered (a definition) or before the
//! hardware step it records runs (a status), but writing one file per change costs a create,
//! an fsync, a rename and a directory fsync each — on a typical VM disk about 0.5 ms,
//! serialised by the directory lock, and with many changes at once the lock is fought over.
//! Instead, every change is appended to one log (`domains.log` beside the directory) and all
//! changes that arrive together share one `fdatasync` (group commit); then the callers are
//! answered. A background step materialises the layout (one file per name, crash-safe
//! writes) once the log has been idle for a moment, coalescing changes to the same name (a
//! define followed by an undefine costs no file work at all; a start's three status writes
//! become one file), and empties the log once every change in it is in place.
//!
//! Recovery: at open, the complete log records are read (a torn last record, with no
//! newline, is cut from the log; a damaged one is skipped) and handed to the caller as the
//! newest content of each name ([`Recovered`], which the loader reads over the directory),
//! and to the committer as pending changes, written to their files by the same background
//! step as any other. A restart after a crash with many changes in flight therefore creates
//! no file before it serves. A reader of the directory sees a change at most one idle moment
//! after it was acknowledged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::persist;

/// Most changes written by one commit.
const MAX_BATCH: usize = 1024;
/// Files materialised per idle step (bounds the delay a new request can see).
const MATERIALIZE_STEP: usize = 16;
/// Quiet time after which pending changes are written to their files. Under load nothing is
/// materialised (so a define and the undefine that follows cancel out) until `MAX_PENDING`.
const IDLE: Duration = Duration::from_millis(20);
/// Changes waiting for their files beyond which materialising no longer waits for idleness
/// (bounds the log and the memory under sustained load).
const MAX_PENDING: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    name: String,
    /// The file's content (a definition's XML, a status's JSON; the field keeps its first
    /// name so logs written before statuses used it still read); `None` deletes it. A
    /// definition's is shared with the stored definition (no copy).
    xml: Option<Arc<str>>,
}

struct Req {
    /// A change, or none: a flush (answered once every change is in its file).
    rec: Option<Record>,
    done: oneshot::Sender<io::Result<()>>,
}

/// What a log held at open: the newest content of each name (`None`: deleted), which the
/// files may not hold yet.
pub type Recovered = BTreeMap<String, Option<Arc<str>>>;

/// Handle to the committer thread.
#[derive(Debug, Clone)]
pub struct CommitLog {
    tx: mpsc::Sender<Req>,
}

/// Where the changes land: `<dir>/<name>.<ext>`.
#[derive(Debug, Clone)]
struct Files {
    dir: PathBuf,
    ext: &'static str,
}

impl Files {
    /// Writes (synced) or removes one file; durable once [`Files::sync`] has run after it.
    fn apply(&self, name: &str, content: Option<&str>) -> io::Result<()> {
        let path = self.dir.join(format!("{name}.{}", self.ext));
        match content {
            Some(x) => persist::write_synced(&path, x.as_bytes(), 0o600),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Makes the renames and removals before it durable: one directory fsync for a batch.
    fn sync(&self) -> io::Result<()> {
        persist::sync_dir(&self.dir)
    }
}

/// Reads the complete records of a log, and the length of its complete lines. A torn last
/// record (a crash in the middle of an append: no newline) is not read; a damaged line in
/// the middle is skipped and logged, never allowed to hide the records after it.
fn read_log(path: &Path) -> io::Result<(Vec<Record>, u64)> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut r = BufReader::new(f);
    let mut line = Vec::new();
    let mut complete = 0u64;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
            break;
        }
        complete += line.len() as u64;
        match serde_json::from_slice::<Record>(&line) {
            Ok(rec) => out.push(rec),
            Err(e) => tracing::error!(
                log = %path.display(),
                "skipping a damaged log record ({} bytes): {e}",
                line.len()
            ),
        }
    }
    Ok((out, complete))
}

fn truncate(log: &File) -> io::Result<()> {
    log.set_len(0)?;
    log.sync_data()
}

impl CommitLog {
    /// Opens `log_path` for the files `<name>.<ext>` of `dir` and starts the committer
    /// thread; returns what the log held (the changes its files may not have yet), which
    /// the committer writes to them in the background.
    pub fn open(
        dir: &Path,
        ext: &'static str,
        log_path: &Path,
    ) -> io::Result<(CommitLog, Recovered)> {
        let files = Files {
            dir: dir.to_path_buf(),
            ext,
        };
        let (records, complete) = read_log(log_path)?;
        let mut pending = Pending::default();
        let mut latest = Recovered::new();
        for rec in records {
            pending.insert(rec.name.clone(), rec.xml.clone());
            latest.insert(rec.name, rec.xml);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log_path)?;
        if latest.is_empty() {
            truncate(&log)?;
        } else if log.metadata()?.len() != complete {
            // Cut a torn tail, so the next append starts a line of its own.
            log.set_len(complete)?;
            log.sync_data()?;
        }
        persist::sync_dir(log_path.parent().unwrap_or(Path::new(".")))?;
        let (tx, rx) = mpsc::channel::<Req>();
        std::thread::Builder::new()
            .name(format!("metalvirt-log-{ext}"))
            .spawn(move || committer(rx, log, files, pending))?;
        Ok((CommitLog { tx }, latest))
    }

    async fn submit(&self, rec: Option<Record>) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Req { rec, done })
            .map_err(|_| io::Error::other("the commit log is closed"))?;
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the commit log stopped")))
    }

    /// Durably records a file's new content.
    pub async fn put(&self, name: &str, xml: Arc<str>) -> io::Result<()> {
        self.submit(Some(Record {
            name: name.to_string(),
            xml: Some(xml),
        }))
        .await
    }

    /// Durably records a deletion.
    pub async fn delete(&self, name: &str) -> io::Result<()> {
        self.submit(Some(Record {
            name: name.to_string(),
            xml: None,
        }))
        .await
    }

    /// Writes every acknowledged change to its file and empties the log: at shutdown, so a
    /// stopped daemon leaves its directory complete for an operator to read or repair.
    pub async fn flush(&self) -> io::Result<()> {
        self.submit(None).await
    }
}

/// Changes acknowledged but not yet in their files: the latest state per name, taken oldest
/// first, so the youngest changes (likely to be overwritten soon) are materialised last.
#[derive(Default)]
struct Pending {
    latest: HashMap<String, (u64, Option<Arc<str>>)>,
    order: VecDeque<(u64, String)>,
    seq: u64,
}

impl Pending {
    fn insert(&mut self, name: String, xml: Option<Arc<str>>) {
        self.seq += 1;
        self.order.push_back((self.seq, name.clone()));
        self.latest.insert(name, (self.seq, xml));
    }

    fn pop_oldest(&mut self) -> Option<(String, Option<Arc<str>>)> {
        while let Some((seq, name)) = self.order.pop_front() {
            if self.latest.get(&name).is_some_and(|(s, _)| *s == seq) {
                let (_, xml) = self.latest.remove(&name)?;
                return Some((name, xml));
            }
        }
        None
    }

    fn len(&self) -> usize {
        self.latest.len()
    }

    fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

fn committer(rx: mpsc::Receiver<Req>, mut log: File, files: Files, mut pending: Pending) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let first = if pending.is_empty() {
            match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(IDLE) {
                Ok(r) => r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    materialize_step(&mut pending, &files, &log);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    while !pending.is_empty() {
                        materialize_step(&mut pending, &files, &log);
                    }
                    return;
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (changes, flushes): (Vec<Req>, Vec<Req>) =
            batch.into_iter().partition(|r| r.rec.is_some());
        if !changes.is_empty() {
            commit(changes, &mut log, &files, &mut pending, &mut buf);
        }
        if !flushes.is_empty() {
            while !pending.is_empty() {
                materialize_step(&mut pending, &files, &log);
            }
            for r in flushes {
                let _ = r.done.send(Ok(()));
            }
        }
    }
}

/// Appends a batch of changes to the log with one `fdatasync`, then answers their callers.
fn commit(
    batch: Vec<Req>,
    log: &mut File,
    files: &Files,
    pending: &mut Pending,
    buf: &mut Vec<u8>,
) {
    buf.clear();
    for r in &batch {
        if let Some(rec) = &r.rec {
            if serde_json::to_writer(&mut *buf, rec).is_ok() {
                buf.push(b'\n');
            }
        }
    }
    let before = log.metadata().map(|m| m.len());
    let res = log.write_all(buf).and_then(|_| log.sync_data());
    if res.is_err() {
        // Cut what a failed append may have left, so no partial record sits in front of
        // the records that later succeed.
        if let Ok(len) = before {
            let _ = log.set_len(len).and_then(|_| log.sync_data());
        }
    }
    match res {
        Ok(()) => {
            for r in batch {
                if let Some(rec) = r.rec {
                    pending.insert(rec.name, rec.xml);
                }
                let _ = r.done.send(Ok(()));
            }
            if pending.len() > MAX_PENDING {
                materialize_step(pending, files, log);
            }
        }
        Err(e) => {
            tracing::error!(dir = %files.dir.display(), "cannot write the commit log: {e}");
            for r in batch {
                let _ = r.done.send(Err(io::Error::new(e.kind(), e.to_string())));
            }
        }
    }
}

/// Writes some pending changes to their files; empties the log when none are left.
fn materialize_step(pending: &mut Pending, files: &Files, log: &File) {
    let mut applied = Vec::new();
    for _ in 0..MATERIALIZE_STEP {
        let Some((name, xml)) = pending.pop_oldest() else {
            break;
        };
        if let Err(e) = files.apply(&name, xml.as_deref()) {
            // Keep it in the log (not emptied while anything is pending) and retry later.
            tracing::error!(file = %name, dir = %files.dir.display(), "cannot write: {e}");
            pending.insert(name, xml);
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
        applied.push((name, xml));
    }
    // The log is emptied only after the directory holding the step's renames is synced;
    // if it cannot be, the step's changes stay pending and are written again.
    if !applied.is_empty() {
        if let Err(e) = files.sync() {
            tracing::error!(dir = %files.dir.display(), "cannot sync: {e}");
            for (name, xml) in applied {
                pending.insert(name, xml);
            }
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
    }
    if pending.is_empty() {
        if let Err(e) = truncate(log) {
            tracing::error!(dir = %files.dir.display(), "cannot empty the commit log: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_reach_files_and_coalesce() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("domains.log");
        let (l, _) = CommitLog::open(d.path(), "xml", &log).unwrap();
        l.put("a", Arc::from("<a/>")).await.unwrap();
        l.put("b", Arc::from("<b/>")).await.unwrap();
        l.delete("b").await.unwrap();
        for _ in 0..200 {
            if std::fs::metadata(&log).unwrap().len() == 0 && d.path().join("a.xml").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            std::fs::read_to_string(d.path().join("a.xml")).unwrap(),
            "<a/>"
        );
        assert!(!d.path().join("b.xml").exists());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
    }

    #[tokio::test]
    async fn flush_writes_every_change_and_empties_the_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("s.log");
        let (l, _) = CommitLog::open(d.path(), "json", &log).unwrap();
        l.put("u1", Arc::from("{}")).await.unwrap();
        l.put("u2", Arc::from("[]")).await.unwrap();
        l.delete("u1").await.unwrap();
        // Durable in the log at once; in the files after the flush, with no idle wait.
        assert!(std::fs::metadata(&log).unwrap().len() > 0);
        l.flush().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("u2.json")).unwrap(),
            "[]"
        );
        assert!(!d.path().join("u1.json").exists());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        l.flush().await.unwrap();
    }

    /// Waits until the committer has emptied the log (every recovered change in its file).
    fn settled(log: &Path) {
        for _ in 0..400 {
            if std::fs::metadata(log).unwrap().len() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the log was not emptied");
    }

    #[test]
    fn recovery_hands_back_complete_records_and_writes_them_later() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("domains.log");
        std::fs::write(d.path().join("old.xml"), "<old/>").unwrap();
        std::fs::write(
            &log,
            "{\"name\":\"x\",\"xml\":\"<x/>\"}\n{\"name\":\"old\",\"xml\":null}\n{\"name\":\"y\",\"xm",
        )
        .unwrap();
        let (_l, recovered) = CommitLog::open(d.path(), "xml", &log).unwrap();
        assert_eq!(recovered.len(), 2);
        assert_eq!(recovered["x"].as_deref(), Some("<x/>"));
        assert_eq!(recovered["old"], None);
        // The torn tail is cut at once; the rest stays in the log until written out.
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.ends_with("null}\n") && !text.contains("\"y\""),
            "{text}"
        );
        settled(&log);
        assert_eq!(
            std::fs::read_to_string(d.path().join("x.xml")).unwrap(),
            "<x/>"
        );
        assert!(!d.path().join("old.xml").exists());
        assert!(!d.path().join("y.xml").exists());
    }

    #[tokio::test]
    async fn a_change_after_recovery_follows_the_recovered_records() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("domains.log");
        std::fs::write(
            &log,
            "{\"name\":\"x\",\"xml\":\"<x1/>\"}\n{\"name\":\"z\",\"x",
        )
        .unwrap();
        let (l, _) = CommitLog::open(d.path(), "xml", &log).unwrap();
        l.put("x", Arc::from("<x2/>")).await.unwrap();
        // A second crash now: the log replays to the newest content, record by record.
        let (records, _) = read_log(&log).unwrap();
        assert_eq!(records.last().unwrap().xml.as_deref(), Some("<x2/>"));
        assert_eq!(records.len(), 2);
        l.flush().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("x.xml")).unwrap(),
            "<x2/>"
        );
    }

    #[test]
    fn a_damaged_record_does_not_hide_the_records_after_it() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("domains.log");
        std::fs::write(
            &log,
            "{\"name\":\"a\",\"xml\":\"<a/>\"}\n{\"name\":\"b\",\"xm\u{0}garbage\n{\"name\":\"c\",\"xml\":\"<c/>\"}\n{\"name\":\"d\",\"x",
        )
        .unwrap();
        let (_l, recovered) = CommitLog::open(d.path(), "xml", &log).unwrap();
        assert_eq!(
            recovered.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a", "c"]
        );
        settled(&log);
        assert!(d.path().join("a.xml").exists());
        assert!(!d.path().join("b.xml").exists());
        assert_eq!(
            std::fs::read_to_string(d.path().join("c.xml")).unwrap(),
            "<c/>"
        );
        assert!(!d.path().join("d.xml").exists(), "the torn tail is cut");
    }
}
