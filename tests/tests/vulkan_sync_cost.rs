//! What a dependent step costs on the Vulkan device: a dispatch + barrier in a chain, against a
//! device-wide barrier inside one dispatch (`VulkanBackend::measure_sync_costs`). On lavapipe
//! (CI) it checks that the probe runs and that the spinning part is skipped where the driver
//! does not say how many workgroups are resident; on a GPU, run with `--nocapture` for the
//! figures (shaders/README.md, "What a dependent step costs").

use mixq_runtime::backend::vulkan::VulkanBackend;
use mixq_runtime::backend::Backend;

#[test]
fn dispatch_chain_and_device_wide_barrier() {
    let v = VulkanBackend::new(None).expect("a Vulkan device");
    eprintln!("{}", v.describe());
    let c = v.measure_sync_costs(200, 1000).unwrap();
    eprintln!(
        "dependent dispatch (launch + barrier): {:.2} us; device-wide barrier in one dispatch of {} workgroups: {} ({})",
        c.dispatch * 1e6,
        c.groups,
        c.grid_barrier
            .map_or("not measured".into(), |s| format!("{:.2} us", s * 1e6)),
        c.how
    );
    assert!(c.dispatch > 0.0 && c.dispatch.is_finite());
    match v.device_info().multiprocessors {
        // Residency unknown (lavapipe, AMD, Intel): the spinning probe must not run.
        None => assert!(c.grid_barrier.is_none() && c.groups == 0),
        Some(sm) => {
            assert_eq!(c.groups, sm);
            let b = c.grid_barrier.expect("one workgroup per SM is resident");
            assert!(b > 0.0 && b.is_finite());
        }
    }
}
