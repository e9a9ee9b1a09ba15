//! Trust boundaries (SPEC §11): what one engine must never take from another, from a
//! file or from a batch. Each test is named after the hole it closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use photofinish::kernels::Workload;
use photofinish::{Batch, ByteSumWorkload, Engine, EngineError, Output, TestBackend};

fn engine_on(backend: &Arc<TestBackend>) -> Engine {
    Engine::builder()
        .backend_instance(backend.clone())
        .without_autotune_file()
        .build()
        .expect("test backend engine builds")
}

/// Engine B accepted engine A's id 0 and ran B's kernel 0: a silently wrong answer.
#[test]
fn a_kernel_id_from_another_engine_is_unknown_not_another_kernel() {
    let backend = Arc::new(TestBackend::new(1, 2, 1));
    let a = engine_on(&backend);
    let b = engine_on(&backend);
    let a0 = a.register(Arc::new(ByteSumWorkload)).unwrap();
    let b0 = b.register(Arc::new(ByteSumWorkload)).unwrap();
    assert_eq!(a0.get(), b0.get(), "both are their engine's kernel 0");
    assert_ne!(a0, b0, "ids of two engines never compare equal");

    let input = vec![1, 2, 3];
    match b.submit(Batch::new(a0, input.clone())) {
        Err(EngineError::UnknownKernel(0)) => {}
        other => panic!("engine B ran engine A's id: {other:?}"),
    }
    assert!(matches!(
        b.try_submit(Batch::new(a0, input.clone())),
        Err(photofinish::TrySubmitError::Rejected(
            _,
            EngineError::UnknownKernel(0)
        ))
    ));
    assert!(matches!(
        b.submit_many([Batch::new(b0, input.clone()), Batch::new(a0, input.clone())]),
        Err(EngineError::UnknownKernel(0))
    ));
    assert_eq!(b.verdict(a0), None);
    assert!(b.kernel_stats(a0).is_none());
    // Each engine still runs its own.
    let answer = a.submit(Batch::new(a0, input.clone())).unwrap().wait();
    assert_eq!(
        answer.unwrap().output,
        Output::Answer(ByteSumWorkload.reference(&input))
    );
}

/// Registering 20 000 kernels slowed quadratically (5 k in 2 s, 20 k in 52 s): every
/// registration copied the list of every kernel registered before it. The last 2 000
/// of 20 000 registrations must cost about what the first 2 000 did.
#[test]
fn registering_many_kernels_does_not_slow_down_quadratically() {
    let backend = Arc::new(TestBackend::new(1, 1, 1));
    let engine = engine_on(&backend);
    let workload: Arc<dyn Workload> = Arc::new(ByteSumWorkload);
    let timed = |n: usize| {
        let start = Instant::now();
        for _ in 0..n {
            engine.register(Arc::clone(&workload)).unwrap();
        }
        start.elapsed()
    };
    let first = timed(2_000);
    timed(16_000);
    let last = timed(2_000);
    // Quadratic: the last 2 000 cost ~19x the first. Linear: ~1x; 4x leaves room for a
    // noisy machine.
    assert!(
        last < first * 4 + Duration::from_millis(50),
        "first 2 000 registrations {first:?}, last 2 000 {last:?}"
    );
    let ids: Vec<_> = (0..3)
        .map(|_| engine.register(Arc::clone(&workload)).unwrap())
        .collect();
    assert_eq!(ids[2].get(), 20_002);
    let input = vec![9, 9];
    let answer = engine
        .submit(Batch::new(ids[2], input.clone()))
        .unwrap()
        .wait();
    assert_eq!(
        answer.unwrap().output,
        Output::Answer(ByteSumWorkload.reference(&input))
    );
}

mod stored_verdicts {
    //! A verdict loaded from the autotune file is a prior, never a fact (SPEC §11).

    use std::path::Path;

    use photofinish::backend::{BindingAccess, BufferArg, KernelVariant};
    use photofinish::kernels::DispatchPlan;
    use photofinish::{BackendChoice, Batch, CacheStatus, Engine, KernelId, KernelVerdict, Output};

    /// Sums the input bytes after `spin` rounds of busy work; `poisoned` adds 1 when
    /// the input starts with 0xFF (an input-dependent bug).
    fn sum(name: &str, spin: u32, poisoned: bool) -> KernelVariant {
        let layout = [BindingAccess::Read, BindingAccess::Write];
        KernelVariant::cpu(name, &layout, 0, move |buffers, _, _| {
            let mut x = 0u32;
            for i in 0..spin {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let mut total: u64 = buffers[0].iter().map(|&b| u64::from(b)).sum();
            if poisoned && buffers[0].first() == Some(&0xFF) {
                total += 1;
            }
            buffers[1][..8].copy_from_slice(&total.to_le_bytes());
            Ok(())
        })
    }

    fn engine_in(dir: &Path) -> Engine {
        Engine::builder()
            .backend(BackendChoice::Cpu)
            .autotune_dir(dir)
            .build()
            .expect("CPU engine builds")
    }

    fn plan(input: &[u8]) -> DispatchPlan {
        DispatchPlan {
            buffers: vec![BufferArg::Data(input.to_vec().into()), BufferArg::Zeroed(8)],
            push_constants: Vec::new(),
            workgroups: [1, 1, 1],
        }
    }

    fn expected(input: &[u8]) -> Output {
        let total: u64 = input.iter().map(|&b| u64::from(b)).sum();
        Output::Buffers(vec![total.to_le_bytes().to_vec()].into())
    }

    /// Runs batches until `kernel` is decided (at most `limit`), checking each answer.
    fn run_until_decided(engine: &Engine, kernel: KernelId, limit: usize) -> usize {
        for n in 0..limit {
            if engine.verdict(kernel) != Some(KernelVerdict::Undecided) {
                return n;
            }
            let input = vec![1, 2, 3, n as u8];
            let answer = engine
                .submit(Batch::with_plan(kernel, plan(&input)))
                .unwrap();
            assert_eq!(answer.wait().unwrap().output, expected(&input));
        }
        panic!("undecided after {limit} batches");
    }

    /// A first engine adopts a fast, correct `sum/fast` and saves the verdict.
    fn adopt_and_save(dir: &Path) {
        let engine = engine_in(dir);
        let k = engine
            .register_pair(
                "sum",
                sum("sum/slow", 400_000, false),
                sum("sum/fast", 1_000, false),
            )
            .unwrap();
        run_until_decided(&engine, k, 200);
        assert_eq!(engine.verdict(k), Some(KernelVerdict::Adopted));
        engine.shutdown();
    }

    /// Sets every stored verdict's window counts in `dir`'s autotune files to
    /// u32::MAX, as a hand-edited or forged file would.
    fn saturate_counts(dir: &Path) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let mut json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let mut saturated = 0;
            saturate(&mut json, &mut saturated);
            assert!(saturated > 0, "no window counts in {}", path.display());
            std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        }
    }

    fn saturate(value: &mut serde_json::Value, saturated: &mut usize) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if key.ends_with("_dispatches") && v.is_number() {
                        *v = u32::MAX.into();
                        *saturated += 1;
                    } else {
                        saturate(v, saturated);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                items.iter_mut().for_each(|v| saturate(v, saturated))
            }
            _ => {}
        }
    }

    /// A file marking a variant with an input-dependent bug as adopted was confirmed by
    /// one agreeing race, and the variant then answered 30 of 30 poisoned inputs wrong.
    #[test]
    fn an_adopted_verdict_from_the_file_never_answers_before_its_confirmation_races() {
        let dir = tempfile::tempdir().unwrap();
        adopt_and_save(dir.path());
        saturate_counts(dir.path());

        // The same names, but the fast variant now has an input-dependent bug.
        let engine = engine_in(dir.path());
        let k = engine
            .register_pair(
                "sum",
                sum("sum/slow", 400_000, false),
                sum("sum/fast", 1_000, true),
            )
            .unwrap();
        assert_eq!(engine.kernel_stats(k).unwrap().cache, CacheStatus::Loaded);
        assert_eq!(engine.verdict(k), Some(KernelVerdict::Undecided));
        let clean = vec![1, 2, 3];
        let answer = engine.submit(Batch::with_plan(k, plan(&clean))).unwrap();
        assert_eq!(answer.wait().unwrap().output, expected(&clean));
        let mut wrong = 0;
        for i in 0..30u8 {
            let poisoned = vec![0xFF, i, 7];
            let answer = engine.submit(Batch::with_plan(k, plan(&poisoned))).unwrap();
            if answer.wait().unwrap().output != expected(&poisoned) {
                wrong += 1;
            }
        }
        assert_eq!(wrong, 0, "wrong answers for poisoned inputs");
        let stats = engine.kernel_stats(k).unwrap();
        assert_eq!(stats.verdict, KernelVerdict::Rejected);
        assert_eq!(stats.cache, CacheStatus::Overturned);
    }

    /// A file whose window counts were u32::MAX froze a 30x slower variant as adopted
    /// for good: the loaded window outweighed every sample this engine took.
    #[test]
    fn a_saturated_window_from_the_file_cannot_keep_a_slower_variant_adopted() {
        let dir = tempfile::tempdir().unwrap();
        adopt_and_save(dir.path());
        saturate_counts(dir.path());

        // `sum/fast` is now about 30x slower than the conservative variant.
        let engine = engine_in(dir.path());
        let k = engine
            .register_pair(
                "sum",
                sum("sum/slow", 20_000, false),
                sum("sum/fast", 600_000, false),
            )
            .unwrap();
        let stats = engine.kernel_stats(k).unwrap();
        assert_eq!(stats.cache, CacheStatus::Loaded);
        assert_eq!(
            stats.observation.baseline_dispatches, 0,
            "loaded counts weigh nothing"
        );
        let batches = run_until_decided(&engine, k, 100);
        let stats = engine.kernel_stats(k).unwrap();
        assert_eq!(
            stats.verdict,
            KernelVerdict::Rejected,
            "after {batches} batches"
        );
        assert_eq!(stats.cache, CacheStatus::Overturned);
        assert!(
            batches <= 2 * photofinish::policy::MIN_DISPATCHES_FOR_VERDICT as usize,
            "{batches} batches to overturn"
        );
    }

    /// A rejected verdict from the file costs no race (SPEC §11): the variant never runs.
    #[test]
    fn a_rejected_verdict_from_the_file_costs_no_race() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = engine_in(dir.path());
            let k = engine
                .register_pair(
                    "sum",
                    sum("sum/slow", 1_000, false),
                    sum("sum/fast", 1_000, true),
                )
                .unwrap();
            let poisoned = vec![0xFF, 1];
            let answer = engine.submit(Batch::with_plan(k, plan(&poisoned))).unwrap();
            assert_eq!(answer.wait().unwrap().output, expected(&poisoned));
            assert_eq!(engine.verdict(k), Some(KernelVerdict::Rejected));
        }
        let engine = engine_in(dir.path());
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&ran);
        let layout = [BindingAccess::Read, BindingAccess::Write];
        let speculative = KernelVariant::cpu("sum/fast", &layout, 0, move |buffers, _, _| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            buffers[1][..8].copy_from_slice(&0u64.to_le_bytes());
            Ok(())
        });
        let k = engine
            .register_pair("sum", sum("sum/slow", 1_000, false), speculative)
            .unwrap();
        assert_eq!(engine.verdict(k), Some(KernelVerdict::Rejected));
        for i in 0..20u8 {
            let input = vec![i, 2];
            let answer = engine.submit(Batch::with_plan(k, plan(&input))).unwrap();
            let answer = answer.wait().unwrap();
            assert!(!answer.raced);
            assert_eq!(answer.output, expected(&input));
        }
        assert_eq!(ran.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
}
