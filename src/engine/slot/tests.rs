//! The slot's own tests, on a slot of the test's own error type (no engine).

use super::*;

/// The errors of the slots under test.
#[derive(Debug, PartialEq, Eq)]
enum Lost {
    Unanswered,
    Taken,
}

impl SlotError for Lost {
    fn unanswered() -> Self {
        Lost::Unanswered
    }
    fn answer_taken() -> Self {
        Lost::Taken
    }
}

type Responder<T> = super::Responder<T, Lost, ()>;
type Ticket<T> = super::Ticket<T, Lost, ()>;

fn one_shot<T: 'static>(busy: Duration) -> (Responder<T>, Ticket<T>) {
    super::one_shot(busy)
}

fn kept<T: 'static>() -> usize {
    spare::kept::<T, Lost, ()>()
}

/// Runs `test` on a thread of its own (slots are kept per thread, and the harness
/// may run several tests on one thread) and fails if it panicked.
fn on_a_thread_of_its_own(test: impl FnOnce() + Send + 'static) {
    std::thread::spawn(test)
        .join()
        .expect("the test thread panicked");
}

fn slot_of<T>(ticket: &Ticket<T>) -> *const Slot<T, Lost, ()> {
    ticket.slot.as_ptr()
}

#[test]
fn a_taken_slot_serves_the_threads_next_ticket_as_new() {
    on_a_thread_of_its_own(|| {
        let (responder, ticket) = one_shot::<u32>(Duration::ZERO);
        let first = slot_of(&ticket);
        responder.answer(Ok(1));
        assert_eq!(ticket.wait(), Ok(1));
        assert_eq!(kept::<u32>(), 1, "the taken slot was not kept");
        let (responder, ticket) = one_shot::<u32>(Duration::ZERO);
        assert_eq!(kept::<u32>(), 0);
        assert_eq!(slot_of(&ticket), first, "the kept slot was not reused");
        assert!(!ticket.is_ready(), "a reused slot starts empty");
        assert_eq!(ticket.wait_timeout(Duration::ZERO), None);
        responder.answer(Ok(2));
        assert_eq!(ticket.wait(), Ok(2));
        // Another answer type does not get that slot.
        let (responder, ticket) = one_shot::<u64>(Duration::ZERO);
        assert_ne!(slot_of(&ticket).cast::<u8>(), first.cast::<u8>());
        drop(responder);
        assert_eq!(ticket.wait(), Err(Lost::Unanswered));
    });
}

/// A ticket is one pointer (a window's list of them stays in the allocator's
/// quick bins); a reused slot takes the new ticket's busy wait and prefetches
/// nothing until told.
#[test]
fn a_ticket_is_a_pointer_and_a_reused_slot_starts_over() {
    assert_eq!(
        std::mem::size_of::<Ticket<u32>>(),
        std::mem::size_of::<usize>()
    );
    on_a_thread_of_its_own(|| {
        let (first_responder, mut first) = one_shot::<u32>(Duration::from_micros(7));
        let (later_responder, later) = one_shot::<u32>(Duration::ZERO);
        first.wait_ahead(&later);
        assert_eq!(first.slot().busy, Duration::from_micros(7));
        let reused = slot_of(&first);
        first_responder.answer(Ok(1));
        assert_eq!(first.wait(), Ok(1));
        let (responder, ticket) = one_shot::<u32>(Duration::from_micros(3));
        assert_eq!(slot_of(&ticket), reused, "the kept slot was not reused");
        assert_eq!(ticket.slot().busy, Duration::from_micros(3));
        assert_eq!(ticket.ahead(), 0, "a reused slot kept its old prefetch");
        responder.answer(Ok(2));
        assert_eq!(ticket.wait(), Ok(2));
        later_responder.answer(Ok(3));
        assert_eq!(later.wait(), Ok(3));
    });
}

/// A slot whose ticket let go before the answer is the responder's to free, and an
/// answer nobody took is dropped with its slot, whichever end lets go last.
#[test]
fn a_slot_let_go_unanswered_is_freed_with_its_answer_not_kept() {
    on_a_thread_of_its_own(|| {
        let answer = std::sync::Arc::new(());
        // The ticket lets go first: the responder frees the slot when it answers.
        let (responder, ticket) = one_shot::<std::sync::Arc<()>>(Duration::ZERO);
        drop(ticket);
        responder.answer(Ok(std::sync::Arc::clone(&answer)));
        assert_eq!(std::sync::Arc::strong_count(&answer), 1, "answer leaked");
        // The responder lets go first, the answer is never taken.
        let (responder, ticket) = one_shot::<std::sync::Arc<()>>(Duration::ZERO);
        responder.answer(Ok(std::sync::Arc::clone(&answer)));
        assert!(ticket.is_ready());
        drop(ticket);
        assert_eq!(std::sync::Arc::strong_count(&answer), 1, "answer leaked");
        assert_eq!(
            kept::<std::sync::Arc<()>>(),
            0,
            "a slot whose answer was not taken was kept"
        );
        // A ticket whose responder was disarmed (a batch never accepted).
        let (responder, ticket) = one_shot::<std::sync::Arc<()>>(Duration::ZERO);
        responder.disarm();
        drop(ticket);
        assert_eq!(kept::<std::sync::Arc<()>>(), 0);
    });
}

#[test]
fn a_thread_keeps_at_most_max_slots() {
    on_a_thread_of_its_own(|| {
        let n = spare::MAX + 44;
        let tickets: Vec<_> = (0..n)
            .map(|i| {
                let (responder, ticket) = one_shot::<usize>(Duration::ZERO);
                responder.answer(Ok(i));
                ticket
            })
            .collect();
        for (i, ticket) in tickets.into_iter().enumerate() {
            assert_eq!(ticket.wait(), Ok(i));
        }
        assert_eq!(kept::<usize>(), spare::MAX);
        let (_, _ticket) = one_shot::<usize>(Duration::ZERO);
        assert_eq!(kept::<usize>(), spare::MAX - 1);
    });
}

#[test]
fn a_ticket_waited_ahead_records_the_later_slot_and_still_answers() {
    on_a_thread_of_its_own(|| {
        let (first_responder, mut first) = one_shot::<u32>(Duration::ZERO);
        let (later_responder, later) = one_shot::<u32>(Duration::ZERO);
        assert_eq!(first.ahead(), 0);
        first.wait_ahead(&later);
        assert_eq!(first.ahead(), slot_of(&later) as usize);
        // The later slot gone before the first is waited for: its address is
        // only prefetched, which is harmless whatever it holds now.
        drop((later_responder, later));
        first_responder.answer(Ok(7));
        assert_eq!(first.wait(), Ok(7));
    });
}
