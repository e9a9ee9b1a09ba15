//! Kernels with several speculative variants (`Engine::register_variants`, or a
//! workload with more than two variants): the engine races each speculative variant
//! against the conservative one in turn, in order, and once all are decided runs the
//! adopted one it measured fastest. Every answer is the conservative one's.
//!
//! Each variant here sums the input bytes (a wrong one adds to the sum). The tests of
//! which variant wins run on the fault-injection `TestBackend` with a fixed kernel time
//! per variant, so the winner is known in advance and no scheduler noise can change
//! it; the stress test runs the real CPU backend, where each variant also busy-waits
//! its own time, and asserts only what timing cannot change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use photofinish::backend::cpu::CpuBackend;
use photofinish::backend::{BindingAccess, BufferArg, KernelVariant};
use photofinish::kernels::DispatchPlan;
use photofinish::{
    Answer, Batch, Engine, EngineError, Event, KernelId, KernelVerdict, Output, TestBackend,
};

#[path = "support/watchdog.rs"]
mod watchdog;

/// Busy-waits `us` microseconds (a sleep would let the OS decide the time).
fn spin(us: u64) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

/// A variant that sums the input bytes into an 8-byte output after `spin_us` µs;
/// `off_by` is added to the sum (a wrong variant when non-zero).
fn variant(name: &str, spin_us: u64, off_by: u64) -> KernelVariant {
    let layout = [BindingAccess::Read, BindingAccess::Write];
    KernelVariant::cpu(name, &layout, 0, move |buffers, _pc, _wg| {
        spin(spin_us);
        let [input, output] = buffers else {
            return Err("takes two buffers".to_string());
        };
        let sum = input.iter().map(|&b| u64::from(b)).sum::<u64>() + off_by;
        output[..8].copy_from_slice(&sum.to_le_bytes());
        Ok(())
    })
}

/// A `TestBackend` (one device, two one-queue families, so races overlap) and the
/// variants `(name, kernel ns on that backend, off_by)`, the first one conservative.
fn timed(variants: &[(&str, u64, u64)]) -> (Arc<TestBackend>, Vec<KernelVariant>) {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let variants = variants
        .iter()
        .map(|&(name, ns, off_by)| {
            backend.set_kernel_ns(name, ns);
            variant(name, 0, off_by)
        })
        .collect();
    (backend, variants)
}

/// Registers `variants` (conservative first) as the kernel "sum".
fn register(engine: &Engine, variants: &[KernelVariant]) -> KernelId {
    engine
        .register_variants("sum", variants[0].clone(), variants[1..].to_vec())
        .expect("the variants share bindings")
}

/// An engine on `backend`, audits off, nothing persisted.
fn engine(backend: &Arc<TestBackend>) -> Engine {
    Engine::builder()
        .backend_instance(Arc::clone(backend) as Arc<dyn photofinish::backend::Backend>)
        .without_autotune_file()
        .audit_period(0)
        .build()
        .expect("the test backend always opens")
}

fn input(seed: u8) -> Vec<u8> {
    (0..256u32).map(|i| (i as u8).wrapping_mul(seed)).collect()
}

fn expected(input: &[u8]) -> Vec<u8> {
    input
        .iter()
        .map(|&b| u64::from(b))
        .sum::<u64>()
        .to_le_bytes()
        .to_vec()
}

/// Runs one batch of input `input(seed)` and checks its answer.
fn sum_batch(engine: &Engine, kernel: KernelId, seed: u8) -> Answer {
    let data = input(seed);
    let plan = DispatchPlan {
        buffers: vec![BufferArg::Data(data.clone().into()), BufferArg::Zeroed(8)],
        push_constants: Vec::new(),
        workgroups: [1, 1, 1],
    };
    let answer = engine
        .submit(Batch::with_plan(kernel, plan))
        .and_then(|t| t.wait())
        .expect("every batch is answered");
    assert_eq!(
        answer.output,
        Output::Buffers(vec![expected(&data)].into()),
        "seed {seed}: a wrong answer was returned"
    );
    answer
}

/// Submits batches one at a time (at most `max`) until every speculative variant is
/// decided, checking every answer; returns how many ran.
fn run_until_all_decided(engine: &Engine, kernel: KernelId, max: usize) -> usize {
    for n in 0..max {
        sum_batch(engine, kernel, n as u8 | 1);
        let stats = engine.kernel_stats(kernel).expect("registered");
        if stats
            .variant_verdicts
            .iter()
            .all(|v| *v != KernelVerdict::Undecided)
        {
            return n + 1;
        }
    }
    panic!(
        "not every variant was decided in {max} batches: {:?}",
        engine.kernel_stats(kernel).map(|s| s.variant_verdicts)
    );
}

#[test]
fn the_fastest_of_several_adopted_variants_ends_in_play() {
    let (backend, variants) = timed(&[
        ("sum/conservative", 800_000, 0),
        ("sum/slower", 1_600_000, 0),
        ("sum/faster", 300_000, 0),
        ("sum/fastest", 20_000, 0),
        ("sum/fast", 400_000, 0),
    ]);
    let engine = engine(&backend);
    let events = engine.subscribe();
    let kernel = register(&engine, &variants);
    assert_eq!(
        engine.kernel_stats(kernel).unwrap().variant,
        1,
        "play starts at variant 1"
    );
    run_until_all_decided(&engine, kernel, 2_000);
    let stats = engine.kernel_stats(kernel).unwrap();
    assert_eq!(
        stats.variant_verdicts,
        vec![
            KernelVerdict::Rejected,
            KernelVerdict::Adopted,
            KernelVerdict::Adopted,
            KernelVerdict::Adopted
        ]
    );
    assert_eq!(stats.variant, 3, "the fastest adopted variant is in play");
    assert_eq!(engine.verdict(kernel), Some(KernelVerdict::Adopted));
    // Batches now run the fastest variant alone.
    let answer = sum_batch(&engine, kernel, 3);
    assert_eq!((answer.variant, answer.raced), (3, false));
    // Play moved 1 → 2 → 3 → 4 along the ladder, then back to 3, each time announced.
    let moves: Vec<usize> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::VariantInPlay {
                kernel: k, variant, ..
            } if k == kernel => Some(variant),
            _ => None,
        })
        .collect();
    assert_eq!(moves, vec![2, 3, 4, 3]);
}

#[test]
fn a_wrong_variant_is_rejected_and_never_answers() {
    let (backend, variants) = timed(&[
        ("sum/conservative", 600_000, 0),
        ("sum/fast-but-wrong", 20_000, 1),
        ("sum/fast", 100_000, 0),
    ]);
    let engine = engine(&backend);
    let events = engine.subscribe();
    let kernel = register(&engine, &variants);
    run_until_all_decided(&engine, kernel, 2_000);
    let stats = engine.kernel_stats(kernel).unwrap();
    assert_eq!(
        stats.variant_verdicts,
        vec![KernelVerdict::Rejected, KernelVerdict::Adopted]
    );
    assert_eq!(stats.variant, 2);
    let caught: Vec<usize> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::MismatchCaught { variant, .. } => Some(variant),
            _ => None,
        })
        .collect();
    assert_eq!(
        caught,
        vec![1],
        "the wrong variant was caught once, on its first race"
    );
}

#[test]
fn when_every_variant_is_rejected_the_conservative_one_runs() {
    let (backend, variants) = timed(&[
        ("sum/conservative", 50_000, 0),
        ("sum/slow", 600_000, 0),
        ("sum/wrong", 10_000, 7),
    ]);
    let engine = engine(&backend);
    let kernel = register(&engine, &variants);
    run_until_all_decided(&engine, kernel, 2_000);
    assert_eq!(engine.verdict(kernel), Some(KernelVerdict::Rejected));
    let answer = sum_batch(&engine, kernel, 5);
    assert_eq!((answer.variant, answer.raced), (0, false));
}

#[test]
fn speculative_variants_must_match_the_conservative_layout() {
    let engine = engine(&timed(&[]).0);
    let mut odd = variant("sum/odd", 10, 0);
    odd.push_constant_bytes = 4;
    let err = engine
        .register_variants(
            "sum",
            variant("sum/conservative", 10, 0),
            vec![variant("sum/fine", 10, 0), odd],
        )
        .expect_err("the third variant's push constants differ");
    assert!(matches!(err, EngineError::InvalidKernel { .. }), "{err}");
    let err = engine
        .register_variants("sum", variant("sum/conservative", 10, 0), Vec::new())
        .expect_err("no speculative variant");
    assert!(matches!(err, EngineError::InvalidKernel { .. }), "{err}");
}

#[test]
fn a_restart_reverifies_each_variant_and_ends_in_the_same_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, variants) = timed(&[
        ("sum/conservative", 800_000, 0),
        ("sum/slower", 1_600_000, 0),
        ("sum/fastest", 20_000, 0),
        ("sum/fast", 300_000, 0),
    ]);
    let build = || {
        Engine::builder()
            .backend_instance(Arc::clone(&backend) as Arc<dyn photofinish::backend::Backend>)
            .autotune_dir(dir.path())
            .audit_period(0)
            .build()
            .expect("the test backend always opens")
    };
    let register = |engine: &Engine| register(engine, &variants);
    let first = build();
    let kernel = register(&first);
    let first_batches = run_until_all_decided(&first, kernel, 2_000);
    let learnt = first.kernel_stats(kernel).unwrap();
    first.shutdown();

    let second = build();
    let kernel = register(&second);
    let fresh = first_batches;
    let batches = run_until_all_decided(&second, kernel, 2_000);
    let again = second.kernel_stats(kernel).unwrap();
    assert_eq!(again.variant_verdicts, learnt.variant_verdicts);
    assert_eq!(again.variant, learnt.variant);
    assert_eq!(
        again.cache,
        photofinish::CacheStatus::Reverified,
        "{again:?}"
    );
    // Loaded verdicts are priors (SPEC §11): a rejected one costs no race, an adopted
    // one the MIN_DISPATCHES_FOR_VERDICT races a fresh engine needs before it adopts.
    let adopted = learnt
        .variant_verdicts
        .iter()
        .filter(|&&v| v == KernelVerdict::Adopted)
        .count();
    let confirmations = adopted * photofinish::policy::MIN_DISPATCHES_FOR_VERDICT as usize;
    assert!(
        batches <= confirmations + 2 && batches < fresh,
        "{batches} batches to re-verify {adopted} adopted variants of {} ({fresh} fresh): \
         the file was not used",
        learnt.variant_verdicts.len()
    );
}

#[test]
fn eight_producers_race_a_ladder_of_variants_and_every_answer_is_right() {
    const PRODUCERS: usize = 8;
    const BATCHES: usize = 400;
    const WINDOW: usize = 16;
    let done = watchdog::watchdog(
        "variants: 8 producers on a ladder",
        Duration::from_secs(120),
    );
    let engine = Arc::new(
        Engine::builder()
            .backend_instance(Arc::new(CpuBackend::with_threads(4).expect("opens")))
            .without_autotune_file()
            .build()
            .expect("engine builds"),
    );
    let events = engine.subscribe();
    let kernel = engine
        .register_variants(
            "sum",
            variant("sum/conservative", 300, 0),
            vec![
                variant("sum/wrong", 5, 1),
                variant("sum/slower", 600, 0),
                variant("sum/fast", 60, 0),
                variant("sum/fastest", 5, 0),
            ],
        )
        .unwrap();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                let mut in_flight = std::collections::VecDeque::new();
                for i in 0..BATCHES {
                    let data = input((p * BATCHES + i) as u8 | 1);
                    let plan = DispatchPlan {
                        buffers: vec![BufferArg::Data(data.clone().into()), BufferArg::Zeroed(8)],
                        push_constants: Vec::new(),
                        workgroups: [1, 1, 1],
                    };
                    let ticket = engine.submit(Batch::with_plan(kernel, plan)).unwrap();
                    in_flight.push_back((ticket, data));
                    if in_flight.len() == WINDOW {
                        let (ticket, data) = in_flight.pop_front().unwrap();
                        let answer = ticket.wait().expect("answered");
                        assert_eq!(answer.output, Output::Buffers(vec![expected(&data)].into()));
                    }
                }
                for (ticket, data) in in_flight {
                    let answer = ticket.wait().expect("answered");
                    assert_eq!(answer.output, Output::Buffers(vec![expected(&data)].into()));
                }
            })
        })
        .collect();
    for p in producers {
        p.join().expect("a producer saw a wrong answer or an error");
    }
    let stats = engine.kernel_stats(kernel).unwrap();
    assert_eq!(
        stats.variant_verdicts[0],
        KernelVerdict::Rejected,
        "{stats:?}"
    );
    assert!(
        !stats.variant_verdicts.contains(&KernelVerdict::Undecided),
        "{:?}",
        stats.variant_verdicts
    );
    // Which correct variant wins is up to the scheduler here; never the wrong one.
    assert_ne!(stats.variant, 1, "the wrong variant is in play");
    let mismatches = events
        .try_iter()
        .filter(|e| matches!(e, Event::MismatchCaught { variant: 1, .. }))
        .count();
    assert!(mismatches >= 1, "the wrong variant was never caught");
    match Arc::try_unwrap(engine) {
        Ok(engine) => engine.shutdown(),
        Err(_) => panic!("a producer still holds the engine"),
    }
    let _ = done.send(());
}

#[test]
fn a_new_key_races_only_the_variant_its_neighbour_runs() {
    // Two speculative variants, both faster than the conservative one, one faster
    // still. Decided on the 4 KiB key (256-byte batches): both adopted, the faster in
    // play. A 32 KiB key (16 KiB batches and their output) then starts from that
    // neighbour: the variant in play there
    // pays its confirmation races, the one it beat starts rejected and is not raced.
    let (backend, variants) = timed(&[
        ("sum/conservative", 800_000, 0),
        ("sum/fast", 400_000, 0),
        ("sum/fastest", 100_000, 0),
    ]);
    let engine = engine(&backend);
    let kernel = register(&engine, &variants);
    run_until_all_decided(&engine, kernel, 200);
    let stats = engine.kernel_stats(kernel).unwrap();
    assert_eq!(
        stats.variant_verdicts,
        vec![KernelVerdict::Adopted, KernelVerdict::Adopted]
    );
    assert_eq!(stats.variant, 2, "the faster variant is in play");

    let mut large = None;
    let mut answers = Vec::new();
    for seed in 0..20u8 {
        let data: Vec<u8> = (0..16u32 << 10).map(|i| (i as u8) ^ seed).collect();
        let plan = DispatchPlan {
            buffers: vec![BufferArg::Data(data.clone().into()), BufferArg::Zeroed(8)],
            push_constants: Vec::new(),
            workgroups: [1, 1, 1],
        };
        let batch = Batch::with_plan(kernel, plan);
        large = Some(batch.tuning_key());
        let answer = engine
            .submit(batch)
            .and_then(|t| t.wait())
            .expect("answered");
        assert_eq!(answer.output, Output::Buffers(vec![expected(&data)].into()));
        answers.push((answer.variant, answer.raced));
    }
    let stats = engine.kernel_stats(kernel).unwrap();
    let key = stats
        .keys
        .iter()
        .find(|s| Some(s.key) == large)
        .expect("the key");
    assert!(key.from_prior, "{key:?}");
    assert_eq!(
        key.variant_verdicts,
        vec![KernelVerdict::Rejected, KernelVerdict::Adopted],
        "the beaten variant starts rejected, the winner is confirmed"
    );
    assert_eq!(
        key.races,
        photofinish::policy::MIN_DISPATCHES_FOR_VERDICT,
        "only the winner's confirmation races: {answers:?}"
    );
    assert!(
        answers.iter().all(|&(variant, _)| variant != 1),
        "the beaten variant never ran: {answers:?}"
    );
    assert_eq!(answers.last(), Some(&(2, false)));
    engine.shutdown();
}
