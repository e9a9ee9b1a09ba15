//! The built-in workloads on real backends: every variant of every workload must give
//! the CPU reference's answer, for empty, tiny, ragged and multi-MiB inputs of every
//! shape, on the CPU backend and on Vulkan (lavapipe in CI, a GPU where there is one);
//! the CPU backend must refuse malformed dispatches with the right typed error.
//!
//! With no Vulkan device the Vulkan tests fail with a clear message, unless
//! `PHOTOFINISH_ALLOW_NO_VULKAN=1` is set, in which case they print that they were
//! skipped.

#[path = "support/vulkan.rs"]
mod no_vulkan;

use std::sync::Arc;

use photofinish::backend::cpu::CpuBackend;
use photofinish::backend::{
    Backend, BackendError, BackendKind, BindingAccess, BindingDesc, BufferArg, DispatchJob,
    KernelHandle, KernelVariant, QueueId,
};
use photofinish::kernels::{
    self, DispatchPlan, InputShape, Scan, Workload, SCAN_SLOT_CAPACITY, SCAN_TILE_BYTES,
};
use photofinish::speculator::SpeculationReport;

/// Sizes that catch edge cases: empty, one byte, not a multiple of 4, 16, the workgroup
/// size or a scan tile, and a few MiB.
const SIZES: [usize; 6] = [0, 1, 7, 1000, 3 * SCAN_TILE_BYTES + 5, (3 << 20) + 13];

/// The job that runs `plan` with `kernel` on `queue`.
fn job(queue: QueueId, kernel: KernelHandle, plan: DispatchPlan) -> DispatchJob {
    plan.into_job(queue, kernel)
}

/// Runs the fused scan (variant 1) on `backend`'s first queue: its counter tail and
/// its answer.
fn fused_scan(
    backend: &dyn Backend,
    scan: &Scan,
    input: &[u8],
) -> (SpeculationReport, Result<Vec<u8>, kernels::WorkloadError>) {
    let kernel = backend.load_kernel(0, &scan.variants()[1]).expect("load");
    let plan = scan.plan(1, input).expect("plan");
    let out = backend
        .dispatch(&[job(backend.queues()[0], kernel, plan)])
        .remove(0)
        .expect("dispatch");
    let report = scan
        .speculation_report(1, &out.outputs)
        .expect("counter tail");
    (report, scan.answer(1, input, &out.outputs))
}

/// Three tiles of filler: the first with as many matches as a tile's slot holds, the
/// second with one more, the third with none.
fn slot_overflow_input(scan: &Scan) -> Vec<u8> {
    let mut input = vec![b'x'; 3 * SCAN_TILE_BYTES];
    let stride = 64;
    for (tile, count) in [(0, SCAN_SLOT_CAPACITY), (1, SCAN_SLOT_CAPACITY + 1)] {
        for m in 0..count {
            let at = tile * SCAN_TILE_BYTES + 100 + m * stride;
            input[at..at + scan.pattern().len()].copy_from_slice(scan.pattern());
        }
    }
    input
}

/// The fused scan on `backend` commits a full slot and rolls back an overfull one, and
/// still answers like the reference.
fn fused_scan_rolls_back_an_overfull_slot(backend: &dyn Backend) {
    let scan = Scan::default();
    let input = slot_overflow_input(&scan);
    let (report, answer) = fused_scan(backend, &scan, &input);
    assert_eq!((report.committed_tiles, report.rolled_back_tiles), (2, 1));
    assert_eq!(answer, Ok(scan.reference(&input)));
    assert_eq!(scan.reference(&input).len() / 4, 2 * SCAN_SLOT_CAPACITY + 1);
}

/// Plans, dispatches and answers variant `variant` of `workload` for `input`.
fn run_variant(
    backend: &dyn Backend,
    workload: &dyn Workload,
    variant: usize,
    input: &[u8],
    max_workgroups: Option<u32>,
) -> Result<Vec<u8>, String> {
    let variants = workload.variants();
    let kernel = backend
        .load_kernel(0, &variants[variant])
        .map_err(|e| e.to_string())?;
    let mut plan = workload.plan(variant, input).map_err(|e| e.to_string())?;
    if let Some(max) = max_workgroups {
        plan.workgroups[0] = plan.workgroups[0].min(max);
    }
    let out = backend
        .dispatch(&[job(backend.queues()[0], kernel, plan)])
        .pop()
        .ok_or("no result")?
        .map_err(|e| e.to_string())?;
    workload
        .answer(variant, input, &out.outputs)
        .map_err(|e| e.to_string())
}

/// Runs every variant of every workload on every shape and size; with
/// `max_workgroups`, the plans' workgroup counts are capped there to check that the
/// kernels are correct for any count (as they must be for inputs beyond 65535 groups).
fn every_variant_matches_the_reference(
    backend: &dyn Backend,
    sizes: &[usize],
    max_workgroups: Option<u32>,
) {
    for workload in kernels::builtin() {
        for shape in workload.shapes() {
            for (i, &len) in sizes.iter().enumerate() {
                let input = workload.generate(shape, len, i as u64 + 1);
                assert_eq!(input.len(), len);
                let want = workload.reference(&input);
                for variant in 0..workload.variants().len() {
                    let got =
                        run_variant(backend, workload.as_ref(), variant, &input, max_workgroups);
                    assert_eq!(
                        got.as_ref(),
                        Ok(&want),
                        "{} variant {variant}, {shape:?}, {len} bytes",
                        workload.name()
                    );
                }
            }
        }
    }
}

#[test]
fn cpu_backend_every_variant_matches_the_reference() {
    let backend = CpuBackend::with_threads(2).expect("CPU backend");
    every_variant_matches_the_reference(&backend, &SIZES, None);
}

/// The wide variants of issue #31 by (workload, variant index): reduce's `vec4-wide`
/// and histogram's `lane-columns`.
const WIDE_VARIANTS: [(&str, usize); 2] = [("reduce", 2), ("histogram", 2)];

/// Sizes at the wide variants' edges: around whole 16 KiB tiles of the wide reduce and
/// whole vec4s of the lane-columns histogram, with ragged ends of 1 to 15 bytes.
const WIDE_EDGE_SIZES: [usize; 8] = [
    15,
    16,
    17,
    16 * 1024 - 4,
    16 * 1024,
    16 * 1024 + 12,
    3 * 16 * 1024 + 1,
    5 * 16 * 1024 + 4 * 256 * 16 + 7,
];

/// The wide variants answer like the reference at their tile and vector edges, with
/// the planned workgroup count and with 1, 3 and 7 workgroups (grid-stride over tiles,
/// the ragged end shared among invocations).
fn wide_variants_match_the_reference_at_their_edges(backend: &dyn Backend) {
    for (name, variant) in WIDE_VARIANTS {
        let workload = kernels::by_name(name).expect("built-in");
        assert!(
            workload.variants()[variant].name.ends_with("wide")
                || workload.variants()[variant].name.ends_with("lane-columns"),
            "{name} variant {variant} is {}",
            workload.variants()[variant].name
        );
        for shape in workload.shapes() {
            for (i, &len) in WIDE_EDGE_SIZES.iter().enumerate() {
                let input = workload.generate(shape, len, 40 + i as u64);
                let want = workload.reference(&input);
                for cap in [None, Some(1), Some(3), Some(7)] {
                    let got = run_variant(backend, workload.as_ref(), variant, &input, cap);
                    assert_eq!(
                        got.as_ref(),
                        Ok(&want),
                        "{name} variant {variant}, {shape:?}, {len} bytes, cap {cap:?}"
                    );
                }
            }
        }
    }
}

/// The lane-columns histogram reads whole vec4s of the zero-padded buffer; the padding
/// bytes past the input's length must not count in bin 0.
fn lane_columns_histogram_counts_no_padding_zero(backend: &dyn Backend) {
    let hist = kernels::by_name("histogram").expect("histogram");
    for len in 1..=40usize {
        let input = vec![0xab; len];
        let got = run_variant(backend, hist.as_ref(), 2, &input, None).expect("runs");
        assert_eq!(&got[0..4], &0u32.to_le_bytes(), "{len} bytes: bin 0");
        assert_eq!(
            &got[0xab * 4..0xab * 4 + 4],
            &(len as u32).to_le_bytes(),
            "{len} bytes: bin 0xab"
        );
    }
}

#[test]
fn cpu_backend_wide_variants_match_the_reference_at_their_edges() {
    let backend = CpuBackend::with_threads(2).expect("CPU backend");
    wide_variants_match_the_reference_at_their_edges(&backend);
    lane_columns_histogram_counts_no_padding_zero(&backend);
}

/// The wide variants ask for at most their cap of workgroups, whatever the input (the
/// grid-stride loop covers the rest), one for a small input and none for an empty one.
#[test]
fn wide_variants_plan_at_most_their_cap_of_workgroups() {
    let big = vec![0u8; 256 << 20];
    for ((name, variant), cap) in WIDE_VARIANTS
        .into_iter()
        .zip([kernels::WIDE_WORKGROUPS, kernels::LANES_WORKGROUPS])
    {
        let workload = kernels::by_name(name).expect("built-in");
        let plan = |input: &[u8]| workload.plan(variant, input).expect("plan").workgroups;
        assert_eq!(plan(&big), [cap, 1, 1], "{name}");
        assert_eq!(plan(&[1u8; 16]), [1, 1, 1], "{name}");
        assert_eq!(plan(&[]), [0, 1, 1], "{name}");
    }
}

/// Sizes for `sum`: empty, ragged (not a multiple of 4 or 16), around the 256-word
/// stride of one workgroup, and large enough that every task of the wide grid has work.
const SUM_SIZES: [usize; 10] = [
    0,
    1,
    7,
    16,
    17,
    1000,
    4096 + 12,
    (64 << 10) + 5,
    (1 << 20) + 3,
    (3 << 20) + 13,
];

/// Both `sum` variants answer like the reference at [`SUM_SIZES`], with the planned
/// workgroup count and with 1 and 3 workgroups (the wide grid's loop strides by the
/// grid, the one-workgroup variant's too).
fn sum_variants_match_the_reference(backend: &dyn Backend) {
    let sum = kernels::by_name("sum").expect("sum is found by name");
    let names: Vec<String> = sum.variants().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["sum/wide-grid", "sum/one-workgroup"]);
    for (i, &len) in SUM_SIZES.iter().enumerate() {
        let input = sum.generate(InputShape::Uniform, len, 70 + i as u64);
        assert_eq!(input.len(), len);
        let want = sum.reference(&input);
        for variant in 0..2 {
            for cap in [None, Some(1), Some(3)] {
                let got = run_variant(backend, sum.as_ref(), variant, &input, cap);
                assert_eq!(
                    got.as_ref(),
                    Ok(&want),
                    "sum variant {variant}, {len} bytes, cap {cap:?}"
                );
            }
        }
    }
}

#[test]
fn cpu_backend_sum_variants_match_the_reference() {
    let backend = CpuBackend::with_threads(2).expect("CPU backend");
    sum_variants_match_the_reference(&backend);
}

/// The wide grid is the same whatever the size (none for an empty input); the other
/// variant is one workgroup.
#[test]
fn sum_plans_a_fixed_wide_grid_and_one_workgroup() {
    let sum = kernels::Sum;
    for len in [1usize, 4096, 8 << 20] {
        let input = vec![1u8; len];
        let wide = sum.plan(0, &input).expect("plan").workgroups;
        assert_eq!(wide, [kernels::SUM_GRID_WORKGROUPS, 1, 1], "{len} bytes");
        assert_eq!(sum.plan(1, &input).expect("plan").workgroups, [1, 1, 1]);
    }
    for variant in 0..2 {
        assert_eq!(sum.plan(variant, &[]).expect("plan").workgroups, [0, 1, 1]);
    }
}

#[cfg(feature = "vulkan")]
mod vulkan {
    use std::sync::OnceLock;

    use photofinish::backend::vulkan::VulkanBackend;
    use photofinish::backend::BackendError;

    use super::*;

    /// The backend shared by the tests of this module, or `None` when skipping is
    /// allowed and there is no device.
    fn backend() -> Option<&'static VulkanBackend> {
        static BACKEND: OnceLock<Result<VulkanBackend, BackendError>> = OnceLock::new();
        super::no_vulkan::require(BACKEND.get_or_init(VulkanBackend::new).as_ref())
    }

    // The uncapped small sizes also run in tests/vulkan_backend.rs; here: the multi-MiB
    // input, and every small size with fewer workgroups than planned.
    #[test]
    fn vulkan_every_variant_matches_the_reference_on_a_large_input() {
        if let Some(backend) = backend() {
            every_variant_matches_the_reference(backend, &SIZES[SIZES.len() - 1..], None);
        }
    }

    #[test]
    fn vulkan_kernels_are_correct_with_fewer_workgroups_than_planned() {
        if let Some(backend) = backend() {
            every_variant_matches_the_reference(backend, &SIZES[..SIZES.len() - 1], Some(2));
        }
    }

    #[test]
    fn vulkan_wide_variants_match_the_reference_at_their_edges() {
        if let Some(backend) = backend() {
            wide_variants_match_the_reference_at_their_edges(backend);
            lane_columns_histogram_counts_no_padding_zero(backend);
        }
    }

    #[test]
    fn vulkan_sum_variants_match_the_reference() {
        if let Some(backend) = backend() {
            sum_variants_match_the_reference(backend);
        }
    }

    #[test]
    fn vulkan_fused_scan_reports_rollbacks_like_the_cpu_backend() {
        let Some(vulkan) = backend() else { return };
        let cpu = CpuBackend::with_threads(2).expect("CPU backend");
        let scan = Scan::default();
        let input = scan.generate(InputShape::DenseMatches, 40 * SCAN_TILE_BYTES, 4);
        let (on_gpu, answer) = fused_scan(vulkan, &scan, &input);
        assert_eq!(on_gpu, fused_scan(&cpu, &scan, &input).0);
        assert_eq!(answer, Ok(scan.reference(&input)));
        assert_eq!(on_gpu.attempted_tiles(), 40);
        assert!(
            on_gpu.rolled_back_tiles > 0,
            "dense matches roll tiles back"
        );
    }

    #[test]
    fn vulkan_fused_scan_rolls_back_a_tile_with_more_matches_than_its_slot() {
        if let Some(vulkan) = backend() {
            fused_scan_rolls_back_an_overfull_slot(vulkan);
        }
    }
}

#[test]
fn references_are_right_on_hand_made_inputs() {
    let hist = kernels::by_name("histogram").expect("histogram");
    let counts = hist.reference(&[3, 3, 255]);
    assert_eq!(&counts[12..16], &2u32.to_le_bytes());
    assert_eq!(&counts[1020..1024], &1u32.to_le_bytes());
    assert_eq!(counts.iter().map(|&b| u32::from(b)).sum::<u32>(), 3);

    let mut input = u32::MAX.to_le_bytes().to_vec();
    input.extend_from_slice(&[2, 1]); // zero extended: 0x0102
    for name in ["reduce", "sum"] {
        let workload = kernels::by_name(name).expect(name);
        assert_eq!(
            workload.reference(&input),
            0x0101u32.to_le_bytes(),
            "{name}"
        );
    }

    let scan = Scan::new(b"aba").expect("pattern");
    let positions: Vec<u8> = [0u32, 2, 6].iter().flat_map(|p| p.to_le_bytes()).collect();
    assert_eq!(scan.reference(b"ababa_aba"), positions);
}

#[test]
fn scan_fused_rolls_back_a_tile_whose_match_straddles_its_edge() {
    let backend = CpuBackend::with_threads(2).expect("CPU backend");
    let scan = Scan::default();
    let mut input = vec![b'x'; 2 * SCAN_TILE_BYTES + 100];
    let edge = SCAN_TILE_BYTES - 3;
    input[edge..edge + scan.pattern().len()].copy_from_slice(scan.pattern());
    input[50..50 + scan.pattern().len()].copy_from_slice(scan.pattern());
    let (report, answer) = fused_scan(&backend, &scan, &input);
    assert_eq!((report.committed_tiles, report.rolled_back_tiles), (2, 1));
    assert_eq!(answer, Ok(scan.reference(&input)));
    // The per-position variant writes no counter tail, whatever its output holds.
    assert_eq!(scan.speculation_report(0, &[vec![1; 16]]), None);
}

#[test]
fn scan_fused_rolls_back_a_tile_with_more_matches_than_its_slot() {
    fused_scan_rolls_back_an_overfull_slot(&CpuBackend::with_threads(2).expect("CPU backend"));
}

#[test]
fn scan_refuses_empty_and_long_patterns() {
    assert!(Scan::new(b"").is_err());
    assert!(Scan::new(&[b'a'; 17]).is_err());
    assert_eq!(Scan::new(&[b'a'; 16]).map(|s| s.pattern().len()), Ok(16));
}

#[test]
fn tampered_outputs_are_bad_output_not_a_wrong_answer() {
    let scan = Scan::default();
    let input = scan.generate(InputShape::DenseMatches, 3 * SCAN_TILE_BYTES, 9);
    let plan = scan.plan(1, &input).expect("plan");
    let mut out = vec![0u8; plan.buffers[1].len() as usize];
    // All-zero output: no tile has a status.
    assert!(scan.answer(1, &input, &[out.clone()]).is_err());
    let hist = kernels::by_name("histogram").expect("histogram");
    assert!(hist.answer(0, &input, &[vec![0; 12]]).is_err());
    out.pop();
    assert!(scan.answer(1, &input, &[out]).is_err());

    // A committed slot (status 1 at word 0, count at word 1, positions from word 2)
    // that lists too many matches, a position outside its tile or one twice.
    let input = vec![b'x'; SCAN_TILE_BYTES];
    let plan = scan.plan(1, &input).expect("plan");
    let slot = |words: &[u32]| {
        let mut out = vec![0u8; plan.buffers[1].len() as usize];
        for (i, w) in words.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        let tail = out.len() - 8;
        out[tail..tail + 4].copy_from_slice(&1u32.to_le_bytes());
        out
    };
    assert_eq!(scan.answer(1, &input, &[slot(&[1, 0])]), Ok(Vec::new()));
    let too_many = SCAN_SLOT_CAPACITY as u32 + 1;
    let outside = SCAN_TILE_BYTES as u32;
    for words in [vec![1, too_many], vec![1, 1, outside], vec![1, 2, 5, 5]] {
        let err = scan.answer(1, &input, &[slot(&words)]);
        assert!(
            matches!(err, Err(kernels::WorkloadError::BadOutput { .. })),
            "{words:?} gave {err:?}"
        );
    }
}

fn reduce_variant(with_cpu: bool) -> KernelVariant {
    let mut v = kernels::by_name("reduce")
        .expect("reduce")
        .variants()
        .remove(0);
    if !with_cpu {
        v.cpu = None;
    }
    v
}

#[test]
fn cpu_backend_describes_one_device_with_a_queue_per_thread() {
    let backend = CpuBackend::with_threads(1).expect("CPU backend");
    assert_eq!(backend.kind(), BackendKind::Cpu);
    assert_eq!(backend.devices().len(), 1);
    assert_eq!(backend.devices()[0].device_uuid, [0; 16]);
    assert_eq!(backend.devices()[0].name, "cpu (rayon, 2 threads)");
    assert_eq!(backend.queues().len(), 2);
}

#[test]
fn cpu_backend_refuses_what_it_cannot_run() {
    let backend = CpuBackend::with_threads(2).expect("CPU backend");
    assert!(matches!(
        backend.load_kernel(0, &reduce_variant(false)),
        Err(BackendError::Unsupported { .. })
    ));
    assert!(matches!(
        backend.load_kernel(1, &reduce_variant(true)),
        Err(BackendError::Unknown { .. })
    ));
    let mut twice = reduce_variant(true);
    twice
        .bindings
        .push(BindingDesc::new(0, BindingAccess::Read));
    assert!(matches!(
        backend.load_kernel(0, &twice),
        Err(BackendError::BindingMismatch { .. })
    ));

    let kernel = backend.load_kernel(0, &reduce_variant(true)).expect("load");
    let good = DispatchJob {
        queue: backend.queues()[0],
        kernel,
        buffers: vec![
            BufferArg::Data(Arc::from(vec![1u8; 16])),
            BufferArg::Zeroed(4),
        ],
        push_constants: 4u32.to_le_bytes().to_vec(),
        workgroups: [1, 1, 1],
    };
    let with = |change: &dyn Fn(&mut DispatchJob)| {
        let mut job = good.clone();
        change(&mut job);
        backend.dispatch(&[job]).remove(0)
    };
    let sum = with(&|_| ()).expect("good job");
    assert_eq!(sum.outputs, vec![0x0404_0404u32.to_le_bytes().to_vec()]);
    assert!(sum.kernel_ns.is_some());

    type Change = Box<dyn Fn(&mut DispatchJob)>;
    type Expect = fn(&BackendError) -> bool;
    let cases: Vec<(&str, Change, Expect)> = vec![
        (
            "missing buffer",
            Box::new(|j| {
                j.buffers.pop();
            }),
            |e| matches!(e, BackendError::BindingMismatch { .. }),
        ),
        (
            "short push constants",
            Box::new(|j| j.push_constants.clear()),
            |e| matches!(e, BackendError::BindingMismatch { .. }),
        ),
        (
            "empty buffer",
            Box::new(|j| j.buffers[1] = BufferArg::Zeroed(0)),
            |e| {
                matches!(
                    e,
                    BackendError::BufferSizeMismatch {
                        slot: 1,
                        got: 0,
                        ..
                    }
                )
            },
        ),
        (
            "too many workgroups",
            Box::new(|j| j.workgroups = [70_000, 1, 1]),
            |e| matches!(e, BackendError::DispatchTooLarge { .. }),
        ),
        (
            "output of the wrong size",
            Box::new(|j| j.buffers[1] = BufferArg::Zeroed(8)),
            |e| matches!(e, BackendError::KernelFailed { .. }),
        ),
        ("foreign queue", Box::new(|j| j.queue.index = 99), |e| {
            matches!(e, BackendError::Unknown { .. })
        }),
        ("foreign kernel", Box::new(|j| j.kernel.id = 99), |e| {
            matches!(e, BackendError::Unknown { .. })
        }),
    ];
    for (what, change, expected) in cases {
        match with(change.as_ref()) {
            Err(e) => assert!(expected(&e), "{what}: got {e:?}"),
            Ok(out) => panic!("{what}: accepted, gave {out:?}"),
        }
    }
}

/// One buffer rule on every backend (`BufferArg`): the CPU backend refused a
/// `Zeroed` `ReadWrite` binding, `Data` for a written binding and a length that is not
/// a whole number of words, all of which the Vulkan backend takes; it now takes them
/// as Vulkan does (padded to whole words, written buffers back at the length given).
#[test]
fn cpu_backend_takes_zeroed_read_write_and_ragged_buffers_as_vulkan_does() {
    let backend = CpuBackend::with_threads(2).expect("CPU backend");
    let layout = [BindingAccess::ReadWrite, BindingAccess::Write];
    // Adds 1 to every word of binding 0; writes binding 0's word count to binding 1.
    let increment = KernelVariant::cpu("test/increment", &layout, 0, |buffers, _, _| {
        let words = buffers[0].len() / 4;
        for word in buffers[0].chunks_exact_mut(4) {
            let w = u32::from_le_bytes(word.try_into().unwrap()) + 1;
            word.copy_from_slice(&w.to_le_bytes());
        }
        buffers[1][..4].copy_from_slice(&(words as u32).to_le_bytes());
        Ok(())
    });
    let kernel = backend.load_kernel(0, &increment).expect("load");
    let run = |buffers: Vec<BufferArg>| {
        let job = DispatchJob {
            queue: backend.queues()[0],
            kernel,
            buffers,
            push_constants: Vec::new(),
            workgroups: [1, 1, 1],
        };
        backend.dispatch(&[job]).remove(0).expect("accepted")
    };
    let data: Vec<u8> = (1..=10).collect();
    let out = run(vec![
        BufferArg::Data(data.clone().into()),
        BufferArg::Data(vec![9u8; 6].into()),
    ]);
    let mut padded = data.clone();
    padded.resize(12, 0);
    let expected: Vec<u8> = padded
        .chunks_exact(4)
        .flat_map(|w| (u32::from_le_bytes(w.try_into().unwrap()) + 1).to_le_bytes())
        .take(10)
        .collect();
    assert_eq!(out.outputs[0], expected);
    assert_eq!(
        out.outputs[1],
        [3, 0, 0, 0, 9, 9],
        "sees 3 words; keeps its tail"
    );
    let out = run(vec![BufferArg::Zeroed(8), BufferArg::Zeroed(4)]);
    assert_eq!(
        out.outputs,
        vec![vec![1, 0, 0, 0, 1, 0, 0, 0], vec![2, 0, 0, 0]]
    );
}

/// A conservative CPU variant that shortened its output buffer reached the caller
/// with no error.
#[test]
fn cpu_code_that_resizes_a_buffer_fails_instead_of_answering() {
    let backend = CpuBackend::with_threads(2).expect("CPU backend");
    let layout = [BindingAccess::Read, BindingAccess::Write];
    let shortens = KernelVariant::cpu("test/shortens", &layout, 0, |buffers, _, _| {
        buffers[1].truncate(2);
        Ok(())
    });
    let kernel = backend.load_kernel(0, &shortens).expect("load");
    let job = DispatchJob {
        queue: backend.queues()[0],
        kernel,
        buffers: vec![BufferArg::Data(vec![1u8; 8].into()), BufferArg::Zeroed(8)],
        push_constants: Vec::new(),
        workgroups: [1, 1, 1],
    };
    match backend.dispatch(&[job]).remove(0) {
        Err(BackendError::KernelFailed { reason, .. }) => {
            assert!(
                reason.contains("resized the buffer of binding 1"),
                "{reason}"
            )
        }
        other => panic!("a shortened output was passed on: {other:?}"),
    }
}

#[test]
fn cpu_backend_loads_the_same_variant_once() {
    let backend = CpuBackend::with_threads(2).expect("CPU backend");
    let variant = reduce_variant(true);
    let first = backend.load_kernel(0, &variant);
    assert!(first.is_ok());
    assert_eq!(backend.load_kernel(0, &variant), first);
    let other = kernels::by_name("reduce")
        .expect("reduce")
        .variants()
        .remove(1);
    assert_ne!(backend.load_kernel(0, &other), first);
}

#[test]
fn cpu_backend_empty_dispatch_returns_outputs_untouched() {
    let backend = CpuBackend::with_threads(2).expect("CPU backend");
    let kernel = backend.load_kernel(0, &reduce_variant(true)).expect("load");
    let job = DispatchJob {
        queue: backend.queues()[0],
        kernel,
        buffers: vec![
            BufferArg::Data(Arc::from(vec![1u8; 16])),
            BufferArg::Zeroed(4),
        ],
        push_constants: 4u32.to_le_bytes().to_vec(),
        workgroups: [0, 1, 1],
    };
    let out = backend.dispatch(&[job]).remove(0).expect("empty dispatch");
    assert_eq!(out.outputs, vec![vec![0u8; 4]]);
    assert_eq!(out.kernel_ns, Some(0));
}

#[test]
fn cpu_backend_races_jobs_on_two_queues_and_keeps_their_order() {
    let backend = CpuBackend::with_threads(2).expect("CPU backend");
    let hist = kernels::by_name("histogram").expect("histogram");
    let input = hist.generate(InputShape::Skewed, 1 << 20, 3);
    let variants = hist.variants();
    let jobs: Vec<DispatchJob> = (0..4)
        .map(|i| {
            let variant = i % 2;
            let plan = hist.plan(variant, &input).expect("plan");
            job(
                backend.queues()[variant],
                backend.load_kernel(0, &variants[variant]).expect("load"),
                plan,
            )
        })
        .collect();
    let want = hist.reference(&input);
    for (i, result) in backend.dispatch(&jobs).into_iter().enumerate() {
        let out = result.expect("dispatch");
        assert_eq!(hist.answer(i % 2, &input, &out.outputs), Ok(want.clone()));
    }
}
