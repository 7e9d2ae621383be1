// Chained dispatches (`-DCHAIN`, the `*_chain` variants; vulkan/ops.rs `Chain`, shaders/README.md
// "Chained decode"): consecutive dispatches recorded without a pipeline barrier between them,
// ordered instead by one counter of finished workgroups per step. A dispatch's workgroups wait
// until every workgroup of the chained dispatches recorded before it has signalled (the host
// pushes that count as `chain_target`), run, and signal. The GPU may then launch a dispatch's
// workgroups, and start their loads that do not depend on the previous dispatch, while that
// dispatch's last workgroups still run: the drain and ramp a barrier costs overlap instead of
// adding up.
//
// Forward progress needs the device to launch the workgroups of consecutive dispatches in
// order (all of dispatch N launched before any of N + 1): then the oldest unfinished dispatch
// waits on nothing unfinished. NVIDIA does; Vulkan does not promise it, so the wait gives up
// after CHAIN_SPINS polls and flags `chain_err`, which the host reports as an error instead of
// hanging (ops.rs `Recorder::read`).
//
// The includer defines CHAIN_BINDING (the binding after its own) before including this, declares
// `layout(offset = 60) uint chain_target;` in its push constants under CHAIN (CHAIN_PUSH), and
// qualifies every buffer an earlier dispatch of the step writes with ACT: coherent, so a read
// after the wait goes to L2 and never sees a stale L1 line (nothing invalidates L1 between
// dispatches without a barrier).

#ifdef CHAIN
#define ACT coherent
#define CHAIN_PUSH layout(offset = 60) uint chain_target;
layout(set = 0, binding = CHAIN_BINDING) coherent volatile buffer ChainCounter {
    uint chain_done;
    uint chain_err;
};
const uint CHAIN_SPINS = 1u << 24;

// Every invocation of the workgroup must call this (it holds a workgroup barrier).
void chain_wait(uint target) {
    if (gl_LocalInvocationIndex == 0u) {
        uint spins = 0u;
        while (chain_done < target) {
            spins++;
            if (spins == CHAIN_SPINS) {
                atomicOr(chain_err, 1u);
                break;
            }
        }
    }
    barrier();
    memoryBarrierBuffer();
}

// Every invocation must call this after its last write.
void chain_signal() {
    memoryBarrierBuffer();
    barrier();
    if (gl_LocalInvocationIndex == 0u) {
        atomicAdd(chain_done, 1u);
    }
}
#else
#define ACT
#define CHAIN_PUSH
#endif
