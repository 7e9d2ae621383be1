// L2 prefetch from the spare workgroups of a latency-bound decode kernel (the row norms): while
// the kernel's own few workgroups run, the GPU's other SMs read the first pf_n0 / pf_n1 32-byte
// sectors of the next matvec's two weights
// (pf0, pf1), so that matvec starts on bytes already in L2 instead of paying its ramp from
// DRAM (shaders/README.md, "L2 prefetch beside the norms"). The reads are folded into a value
// stored to `sink` only if it equals the push constant `never`, so the compiler keeps them and
// no real buffer is ever written. The including shader declares p.pf_groups, p.pf_n0, p.pf_n1
// and p.never, and defines PF_BINDING (pf0; pf1 and the sink follow).
layout(set = 0, binding = PF_BINDING) readonly buffer P0 { uvec4 pf0[]; };
layout(set = 0, binding = PF_BINDING + 1) readonly buffer P1 { uvec4 pf1[]; };
layout(set = 0, binding = PF_BINDING + 2) buffer Sink { uint sink[]; };

// Workgroup k of the p.pf_groups prefetching ones.
void prefetch(uint k) {
    uint stride = p.pf_groups * gl_WorkGroupSize.x;
    uint fold = 0u;
    for (uint i = k * gl_WorkGroupSize.x + gl_LocalInvocationID.x; i < max(p.pf_n0, p.pf_n1);
         i += stride) {
        // one word per 32-byte sector brings the whole sector into L2
        if (i < p.pf_n0) fold ^= pf0[2u * i].x;
        if (i < p.pf_n1) fold += pf1[2u * i].x;
    }
    if (fold == p.never) {
        sink[0] = fold;
    }
}
