//! Decoding and encoding off the caller's thread: a reader thread fills a bounded channel ahead of
//! the consumer, a writer thread drains one behind the producer. The model thread then only
//! waits on pipes when the queue is empty (source) or full (sink).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::{FrameSink, FrameSource, RgbFrame, VideoError, VideoInfo};

/// Called to unblock a worker stuck in a pipe (kills the child process).
pub(crate) type Canceller = Box<dyn Fn() + Send>;

/// Runs a blocking [`FrameSource`] on its own thread.
pub(crate) struct ThreadedSource {
    info: VideoInfo,
    label: PathBuf,
    rx: Option<Receiver<Result<RgbFrame, VideoError>>>,
    handle: Option<JoinHandle<()>>,
    cancel: Option<Canceller>,
}

impl ThreadedSource {
    pub(crate) fn spawn(
        mut inner: Box<dyn FrameSource>,
        queue: usize,
        label: PathBuf,
        cancel: Option<Canceller>,
    ) -> Result<Self, VideoError> {
        let info = inner.info().clone();
        let (tx, rx) = sync_channel(queue.max(1));
        let handle = std::thread::Builder::new()
            .name("flashvsr-decode".into())
            .spawn(move || loop {
                match inner.next_frame() {
                    Ok(Some(frame)) => {
                        if tx.send(Ok(frame)).is_err() {
                            break; // consumer gone
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            })
            .map_err(|e| VideoError::io(&label, e))?;
        Ok(ThreadedSource {
            info,
            label,
            rx: Some(rx),
            handle: Some(handle),
            cancel,
        })
    }
}

impl FrameSource for ThreadedSource {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<RgbFrame>, VideoError> {
        let Some(rx) = &self.rx else { return Ok(None) };
        match rx.recv() {
            Ok(Ok(frame)) => Ok(Some(frame)),
            Ok(Err(e)) => {
                self.rx = None;
                Err(e)
            }
            Err(_) => {
                // Channel closed: the reader finished, or panicked.
                self.rx = None;
                match self.handle.take().map(|h| h.join()) {
                    Some(Err(_)) => Err(VideoError::format(&self.label, "decoder thread panicked")),
                    _ => Ok(None),
                }
            }
        }
    }
}

impl Drop for ThreadedSource {
    fn drop(&mut self) {
        // Closing the channel stops the reader at its next frame; cancelling unblocks a pipe read.
        self.rx = None;
        if let Some(cancel) = &self.cancel {
            cancel();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

type SinkWorker = JoinHandle<(Box<dyn FrameSink>, Result<(), VideoError>)>;

/// Runs a blocking [`FrameSink`] on its own thread.
pub(crate) struct ThreadedSink {
    width: usize,
    height: usize,
    label: PathBuf,
    index: u64,
    tx: Option<SyncSender<RgbFrame>>,
    handle: Option<SinkWorker>,
    aborting: Arc<AtomicBool>,
    cancel: Option<Canceller>,
}

impl ThreadedSink {
    pub(crate) fn spawn(
        mut inner: Box<dyn FrameSink>,
        width: usize,
        height: usize,
        queue: usize,
        label: PathBuf,
        cancel: Option<Canceller>,
    ) -> Result<Self, VideoError> {
        let (tx, rx) = sync_channel::<RgbFrame>(queue.max(1));
        let aborting = Arc::new(AtomicBool::new(false));
        let flag = aborting.clone();
        let handle = std::thread::Builder::new()
            .name("flashvsr-encode".into())
            .spawn(move || {
                for frame in rx {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Err(e) = inner.write_frame(&frame) {
                        return (inner, Err(e));
                    }
                }
                (inner, Ok(()))
            })
            .map_err(|e| VideoError::io(&label, e))?;
        Ok(ThreadedSink {
            width,
            height,
            label,
            index: 0,
            tx: Some(tx),
            handle: Some(handle),
            aborting,
            cancel,
        })
    }

    /// Stops the worker and hands back the inner sink with the worker's result.
    fn join(&mut self) -> Option<(Box<dyn FrameSink>, Result<(), VideoError>)> {
        self.tx = None;
        let handle = self.handle.take()?;
        handle.join().ok()
    }

    fn abort_now(&mut self) {
        self.aborting.store(true, Ordering::Relaxed);
        self.tx = None;
        if let Some(cancel) = &self.cancel {
            cancel();
        }
        if let Some((inner, _)) = self.join() {
            inner.abort();
        }
    }
}

impl ThreadedSink {
    fn check_size(&self, frame: &RgbFrame) -> Result<(), VideoError> {
        if frame.width != self.width || frame.height != self.height || !frame.is_consistent() {
            return Err(VideoError::FrameSize {
                path: self.label.clone(),
                index: self.index,
                width: self.width,
                height: self.height,
                got_width: frame.width,
                got_height: frame.height,
                got_len: frame.data.len(),
            });
        }
        Ok(())
    }

    fn send(&mut self, frame: RgbFrame) -> Result<(), VideoError> {
        let Some(tx) = &self.tx else {
            return Err(VideoError::format(
                &self.label,
                "sink already failed or finished",
            ));
        };
        if tx.send(frame).is_err() {
            // The worker stopped: it failed on an earlier frame. Report its error, clean up.
            return Err(match self.join() {
                Some((inner, Err(e))) => {
                    inner.abort();
                    e
                }
                Some((inner, Ok(()))) => {
                    inner.abort();
                    VideoError::format(&self.label, "writer stopped unexpectedly")
                }
                None => VideoError::format(&self.label, "writer thread panicked"),
            });
        }
        self.index += 1;
        Ok(())
    }
}

impl FrameSink for ThreadedSink {
    fn write_frame(&mut self, frame: &RgbFrame) -> Result<(), VideoError> {
        self.check_size(frame)?;
        self.send(frame.clone())
    }

    fn write_frame_owned(&mut self, frame: RgbFrame) -> Result<(), VideoError> {
        self.check_size(&frame)?;
        self.send(frame)
    }

    fn finish(mut self: Box<Self>) -> Result<(), VideoError> {
        if self.index == 0 {
            // An output without frames is never what was asked for (ffmpeg would happily
            // write an empty mp4): keep nothing.
            self.abort_now();
            return Err(VideoError::format(
                &self.label,
                "no frames were written; nothing saved",
            ));
        }
        match self.join() {
            Some((inner, Ok(()))) => inner.finish(),
            Some((inner, Err(e))) => {
                inner.abort();
                Err(e)
            }
            None => Err(VideoError::format(
                &self.label,
                "writer already failed or stopped",
            )),
        }
    }

    fn abort(mut self: Box<Self>) {
        self.abort_now();
    }
}

impl Drop for ThreadedSink {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.abort_now();
        }
    }
}
