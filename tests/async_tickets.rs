//! Tickets as futures (SPEC §10): an async caller awaits answers without a blocked
//! thread, on tokio and on a minimal executor of its own; photofinish depends on no
//! runtime.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use photofinish::kernels::{Reduce, Workload};
use photofinish::{BackendChoice, Batch, Engine, Output, TrySubmitError};

#[path = "support/watchdog.rs"]
mod watchdog;

fn engine() -> Arc<Engine> {
    Arc::new(
        Engine::builder()
            .backend(BackendChoice::Cpu)
            .without_autotune_file()
            .channel_capacity(4)
            .build()
            .expect("CPU engine builds"),
    )
}

/// Submits without blocking the executor's thread: on `Full`, yields and retries.
async fn submit(engine: &Engine, mut batch: Batch) -> photofinish::Ticket {
    loop {
        match engine.try_submit(batch) {
            Ok(ticket) => return ticket,
            Err(TrySubmitError::Full(back)) => {
                batch = back;
                YieldOnce(false).await;
            }
            Err(e) => panic!("refused: {e:?}"),
        }
    }
}

/// Returns `Pending` once (waking itself), then `Ready`.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// 64 batches submitted from async tasks, all awaited: every answer is the reference.
async fn sixty_four_answers(engine: Arc<Engine>) -> usize {
    let kernel = engine.register(Arc::new(Reduce)).unwrap();
    let mut tickets = Vec::new();
    let mut inputs = Vec::new();
    for i in 0..64u64 {
        let input = Reduce.generate(Reduce.shapes()[0], 16 * 1024, i);
        tickets.push(submit(&engine, Batch::new(kernel, input.clone())).await);
        inputs.push(input);
    }
    let mut right = 0;
    for (ticket, input) in tickets.into_iter().zip(&inputs) {
        let answer = ticket.await.expect("answered");
        assert_eq!(answer.output, Output::Answer(Reduce.reference(input)));
        right += 1;
    }
    right
}

#[test]
fn tickets_are_awaited_on_a_tokio_runtime() {
    let _watchdog = watchdog::watchdog("tokio awaits tickets", Duration::from_secs(60));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let engine = engine();
    let tasks: Vec<_> = (0..3)
        .map(|_| runtime.spawn(sixty_four_answers(Arc::clone(&engine))))
        .collect();
    let right: usize = runtime.block_on(async {
        let mut right = 0;
        for task in tasks {
            right += task.await.unwrap();
        }
        right
    });
    assert_eq!(right, 3 * 64);
}

/// The smallest executor there is: poll, park until woken. A lost wake-up hangs it (the
/// watchdog fails the test).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::park();
    }
}

#[test]
fn tickets_are_awaited_on_a_minimal_executor() {
    let _watchdog =
        watchdog::watchdog("a minimal executor awaits tickets", Duration::from_secs(60));
    assert_eq!(block_on(sixty_four_answers(engine())), 64);
}

/// A ticket polled before its answer, then waited for as usual, still gets it; awaiting
/// a ticket whose answer is in returns at once.
#[test]
fn a_polled_ticket_can_still_be_waited_for() {
    let engine = engine();
    let kernel = engine.register(Arc::new(Reduce)).unwrap();
    let input = Reduce.generate(Reduce.shapes()[0], 1 << 20, 9);
    let mut ticket = engine.submit(Batch::new(kernel, input.clone())).unwrap();
    let waker = Waker::noop();
    let polled = std::pin::Pin::new(&mut ticket).poll(&mut Context::from_waker(waker));
    let answer = match polled {
        Poll::Ready(answer) => answer,
        Poll::Pending => ticket.wait(),
    };
    assert_eq!(
        answer.unwrap().output,
        Output::Answer(Reduce.reference(&input))
    );
    let ticket = engine.submit(Batch::new(kernel, input.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(block_on(ticket).is_ok());
}
