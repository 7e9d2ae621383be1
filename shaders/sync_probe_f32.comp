#version 450
// Two probes of what a dependent step costs on the device (VulkanBackend::measure_sync_costs,
// shaders/README.md "What a dependent step costs"):
// - mode 0, one tiny step: each invocation adds 1 to data[i] (i < n). The host records many
//   such dispatches with a barrier between each: the time per dispatch is the launch +
//   barrier cost every dependent decode command pays.
// - mode 1, `rounds` device-wide barriers inside ONE dispatch: every workgroup counts itself
//   in `cnt` and spins until all have arrived. Only valid when every workgroup is resident at
//   once (the host launches at most one per SM); the spin is bounded, and a workgroup that
//   gives up sets `fail` and the rest of its rounds are skipped, so a device that does not
//   keep them all resident (lavapipe runs workgroups a few at a time) ends instead of hanging.
//   The time per round is what a persistent kernel would pay per dependent step instead.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 256) in;

layout(push_constant) uniform Params {
    uint mode;
    uint rounds;
    uint n;
} p;

layout(set = 0, binding = 0) coherent buffer B {
    uint cnt;
    uint fail;
    uint data[];
};

shared bool gave_up;

void main() {
    if (p.mode == 0u) {
        uint i = group_index() * 256u + gl_LocalInvocationID.x;
        if (i < p.n) {
            data[i] += 1u;
        }
        return;
    }
    uint groups = gl_NumWorkGroups.x * gl_NumWorkGroups.y;
    for (uint r = 1u; r <= p.rounds; r++) {
        // Whatever this workgroup wrote is visible before it counts itself.
        memoryBarrierBuffer();
        barrier();
        if (gl_LocalInvocationID.x == 0u) {
            atomicAdd(cnt, 1u);
            uint spins = 0u;
            while (atomicAdd(cnt, 0u) < r * groups && spins < (1u << 20)) {
                spins++;
            }
            gave_up = spins >= (1u << 20);
            if (gave_up) {
                atomicOr(fail, 1u);
            }
        }
        barrier();
        if (gave_up) {
            return;
        }
    }
}
