use super::*;
use crate::shapes;

fn decode(m: &TimingModel, size: &str, ctx: usize) -> NpuTimeBreakdown {
    m.predict(
        &shapes::gemma3(size).unwrap(),
        &AttnQTypes::optimal(),
        ctx,
        1,
    )
    .unwrap()
}

#[test]
fn calibration_reproduces_the_measurements() {
    let m = TimingModel::calibrated(NpuSpec::phoenix());
    let core = m.spec.bf16_ops_per_cycle as f64 * m.spec.clock_hz;
    assert!((m.utilization(1) * core - 0.4e9).abs() < 1.0);
    assert!((m.utilization(64) * core * 16.0 - 265e9).abs() < 1e3);
    assert!(m.utilization(8) > m.utilization(1) && m.utilization(8) < m.utilization(64));
    assert_eq!(
        m.read_bytes_per_s(),
        32e9,
        "Phoenix's shim ceiling binds below 60 GB/s"
    );
}

#[test]
fn monotone_in_model_size_and_context() {
    for m in [
        TimingModel::calibrated(NpuSpec::phoenix()),
        TimingModel::roofline(NpuSpec::phoenix()),
    ] {
        let mut last = 0.0;
        for size in shapes::SIZES {
            let t = decode(&m, size, 2048).per_token_s;
            assert!(t > last, "{}: {size} {t} <= {last}", m.label);
            last = t;
        }
        let mut last = 0.0;
        for ctx in [1usize, 512, 1024, 4096, 32768] {
            let t = decode(&m, "4b", ctx).per_token_s;
            assert!(t >= last, "{}: ctx {ctx}", m.label);
            last = t;
        }
    }
}

#[test]
fn decode_of_27b_is_bounded_below_by_the_dram_roofline() {
    for m in [
        TimingModel::calibrated(NpuSpec::phoenix()),
        TimingModel::roofline(NpuSpec::phoenix()),
    ] {
        for ctx in [1usize, 4096] {
            let b = decode(&m, "27b", ctx);
            println!("gemma3-27b decode, {b}");
            let floor = (b.weight_bytes + b.kv_bytes) / 120e9;
            assert!(
                b.per_token_s >= floor,
                "{}: {} < {}",
                m.label,
                b.per_token_s,
                floor
            );
            assert!(b.per_token_s >= b.dram_floor_s);
        }
    }
    // the 27B attention weights in the optimal recipe: q/k/v 4.5 bpw, o 4 bpw + 8 B per row
    let b = decode(&TimingModel::roofline(NpuSpec::phoenix()), "27b", 1);
    let per_layer = 5376.0 * (4096.0 + 2048.0 + 2048.0) * 4.5 / 8.0 + 5376.0 * (4096.0 / 2.0 + 8.0);
    assert!(
        (b.weight_bytes - 62.0 * per_layer).abs() < 1.0,
        "{}",
        b.weight_bytes
    );
}

#[test]
fn prefill_chunks_cost_less_per_token_than_decode() {
    let m = TimingModel::calibrated(NpuSpec::phoenix());
    let cfg = shapes::gemma3("4b").unwrap();
    let d = m.predict(&cfg, &AttnQTypes::optimal(), 512, 1).unwrap();
    let p = m.predict(&cfg, &AttnQTypes::optimal(), 512, 128).unwrap();
    println!(
        "4b decode {:.3} ms/token, prefill chunk of 128 {:.3} ms/token",
        d.per_token_s * 1e3,
        p.per_token_s * 1e3
    );
    assert!(p.per_token_s < d.per_token_s / 4.0);
}

#[test]
fn faster_parts_are_faster() {
    let a = decode(&TimingModel::calibrated(NpuSpec::phoenix()), "12b", 1024).per_token_s;
    let b = decode(&TimingModel::calibrated(NpuSpec::hawk_point()), "12b", 1024).per_token_s;
    assert!(b < a);
}

#[test]
fn table_of_decode_predictions() {
    // printed for npu/README.md (cargo test -p mixq-npu table_of -- --nocapture)
    println!("| size | ctx | weights MB | KV MB | calibrated ms/token | roofline ms/token | DRAM floor ms |");
    for size in shapes::SIZES {
        for ctx in [1usize, 4096] {
            let c = decode(&TimingModel::calibrated(NpuSpec::phoenix()), size, ctx);
            let r = decode(&TimingModel::roofline(NpuSpec::phoenix()), size, ctx);
            println!(
                "| {size} | {ctx} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
                c.weight_bytes / 1e6,
                c.kv_bytes / 1e6,
                c.per_token_s * 1e3,
                r.per_token_s * 1e3,
                r.dram_floor_s * 1e3
            );
            assert!(c.per_token_s >= r.per_token_s);
        }
    }
}
