use super::*;
use crate::shapes;
use mixq_format::profile::{plan, DeviceProfile, TensorSpec};

#[test]
fn every_gemma3_size_fits_decode_and_prefill_and_says_what_streams() {
    let spec = NpuSpec::phoenix();
    for size in shapes::SIZES {
        let cfg = shapes::gemma3(size).unwrap();
        for layer in [0, 5] {
            let dims = AttnDims::from_config(&cfg, layer).unwrap();
            for tokens in [1usize, 16, 128] {
                let plan =
                    TilingPlan::for_layer(&spec, &dims, &AttnQTypes::optimal(), tokens).unwrap();
                if layer == 0 && (tokens == 1 || tokens == 128) {
                    println!("gemma3-{size}:\n{plan}");
                }
                for t in &plan.projections {
                    assert!(t.l1.fits(), "{size} {:?}", t);
                    assert!(t.mem_tile_bytes <= spec.mem_tile_bytes);
                    assert!(t.cores * t.rows_per_core >= t.rows);
                    // rows covered exactly once
                    let covered: usize = (0..t.cores).map(|c| t.core_rows(c).len()).sum();
                    assert_eq!(covered, t.rows);
                }
                assert!(plan.attention.l1.fits());
                assert!(
                    !plan.not_fitting.is_empty(),
                    "the plan always reports what streams"
                );
            }
        }
    }
}

#[test]
fn big_layers_report_that_weights_stream() {
    let spec = NpuSpec::phoenix();
    let cfg = shapes::gemma3("27b").unwrap();
    let dims = AttnDims::from_config(&cfg, 0).unwrap();
    let plan = TilingPlan::for_layer(&spec, &dims, &AttnQTypes::optimal(), 1).unwrap();
    assert!(plan.layer_weight_bytes > 30 << 20);
    assert!(plan.not_fitting[0].contains("exceed"));
    // 27B q_proj: 4096 rows over 16 tiles, x = 5376 bf16 resident
    let q = plan.proj(Proj::Q);
    assert_eq!(
        (q.rows, q.cols, q.cores, q.rows_per_core),
        (4096, 5376, 16, 256)
    );
    assert_eq!(q.l1.activations, 5376 * 2);
    // sliding layers see at most the window; full layers everything
    assert_eq!(dims.visible(5000), 1024);
    let full = AttnDims::from_config(&cfg, 5).unwrap();
    assert_eq!(full.kind, LayerKind::Full);
    assert_eq!(full.visible(5000), 5001);
}

#[test]
fn attention_partition_spreads_few_kv_heads_over_tiles() {
    let spec = NpuSpec::phoenix();
    let cfg = shapes::gemma3("270m").unwrap(); // 1 KV head
    let dims = AttnDims::from_config(&cfg, 0).unwrap();
    let plan = TilingPlan::for_layer(&spec, &dims, &AttnQTypes::optimal(), 1).unwrap();
    let a = &plan.attention;
    assert_eq!(a.parts_per_head(), 16);
    let p = a.partition(512);
    assert!(p.kv_chunk * p.chunks_per_partition * 16 >= 512);
    assert_eq!(a.cores_used(1), 1);
    let cfg = shapes::gemma3("27b").unwrap(); // 16 KV heads: one head per tile
    let dims = AttnDims::from_config(&cfg, 0).unwrap();
    let plan = TilingPlan::for_layer(&spec, &dims, &AttnQTypes::optimal(), 1).unwrap();
    assert_eq!(plan.attention.parts_per_head(), 1);
    assert_eq!(
        plan.attention.partition(1024).chunks_per_partition,
        1024usize.div_ceil(plan.attention.kv_chunk)
    );
}

#[test]
fn non_w4_weights_are_refused() {
    let spec = NpuSpec::phoenix();
    let cfg = shapes::gemma3("1b").unwrap();
    let dims = AttnDims::from_config(&cfg, 0).unwrap();
    let e = TilingPlan::for_layer(&spec, &dims, &AttnQTypes::uniform(QType::I8Sym), 1).unwrap_err();
    assert!(e.to_string().contains("I8_SYM"), "{e}");
    assert!(AttnDims::from_config(&cfg, 26).is_err());
}

#[test]
fn groups_of_32_tile_with_their_larger_parameter_arrays() {
    // I4_GROUPED32 rows carry twice I4_GROUPED's parameters: a prefill tile of the same
    // [rows, k] holds 2 more bytes per 32 weights of each row
    let spec = NpuSpec::phoenix();
    let cfg = shapes::gemma3("1b").unwrap();
    let dims = AttnDims::from_config(&cfg, 0).unwrap();
    for tokens in [1, 256] {
        let g64 =
            TilingPlan::for_layer(&spec, &dims, &AttnQTypes::uniform(QType::I4Grouped), tokens);
        let g32 = TilingPlan::for_layer(
            &spec,
            &dims,
            &AttnQTypes::uniform(QType::I4Grouped32),
            tokens,
        );
        let (g64, g32) = (g64.unwrap(), g32.unwrap());
        for p in Proj::ALL {
            let (a, b) = (g64.proj(p), g32.proj(p));
            assert!(b.l1.fits(), "{p:?} tokens {tokens}");
            assert_eq!(b.row_bytes, a.row_bytes + a.cols / 32 * 2, "{p:?}");
        }
    }
}

#[test]
fn dma_plan_reads_each_tiles_rows_from_the_npu_banks() {
    // Place a 1B-shaped model with the phoenix profile (formats' placement), then feed layer 0.
    let cfg = shapes::gemma3("1b").unwrap();
    let q = AttnQTypes::optimal();
    let mut tensors = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        let dims = AttnDims::from_config(&cfg, l).unwrap();
        for p in Proj::ALL {
            let (r, c) = dims.shape(p);
            tensors.push(TensorSpec::new(p.hf_name(l), q.get(p), &[r, c]));
        }
    }
    let placed = plan(&tensors, &DeviceProfile::phoenix()).unwrap();
    let spec = NpuSpec::phoenix();
    let dims = AttnDims::from_config(&cfg, 3).unwrap();
    let tp = TilingPlan::for_layer(&spec, &dims, &q, 1).unwrap();
    let locs: Vec<(Proj, TensorLocation)> = Proj::ALL
        .iter()
        .map(|&p| {
            let (_, pl) = placed
                .tensors
                .iter()
                .find(|(t, _)| t.name == p.hf_name(3))
                .unwrap();
            (p, TensorLocation::from(pl))
        })
        .collect();
    let dma = tp.dma_plan(&locs).unwrap();
    for p in Proj::ALL {
        let t = tp.proj(p);
        let (_, loc) = locs.iter().find(|(q, _)| *q == p).unwrap();
        let mine: Vec<&DmaTransfer> = dma.iter().filter(|d| d.proj == p).collect();
        assert_eq!(
            mine.iter().map(|d| d.length).sum::<u64>(),
            loc.length,
            "{p:?}"
        );
        assert_eq!(mine[0].offset, loc.offset);
        for w in mine.windows(2) {
            assert_eq!(w[0].offset + w[0].length, w[1].offset, "contiguous rows");
        }
        assert!(mine
            .iter()
            .all(|d| d.from_npu_bank && d.section.starts_with("npu.bank")));
        assert_eq!(mine.len(), t.cores);
    }
    // a wrong length is caught
    let mut bad = locs.clone();
    bad[0].1.length -= 1;
    assert!(tp.dma_plan(&bad).is_err());
}
