// The context switch under the CUDA stand-in's fibers (runtime.cc): a fiber's saved registers
// and stack pointer, a switch between two contexts, and a fresh context that starts in a given
// function on a given stack. On x86-64 a few instructions that save only what the calling
// convention asks a callee to keep (~10 ns a switch); glibc's swapcontext also saves the
// signal mask, a system call each way (~300 ns), which made it most of a kernel's run time.
// Elsewhere, ucontext.
#pragma once

#include <cstddef>

#if !(defined(__x86_64__) && defined(__ELF__))
#include <ucontext.h>
#endif

namespace qlorad::cuda_on_cpu {

struct FiberContext {
#if defined(__x86_64__) && defined(__ELF__)
  void* stack_pointer = nullptr;  // where the switch pushed the callee-saved registers
#else
  ucontext_t context;
#endif
};

// Saves the running context in `from` and resumes `to`.
void SwitchFiber(FiberContext& from, FiberContext& to);

// Makes `context` start `entry` (which must never return) on [stack, stack + size).
void MakeFiber(FiberContext& context, char* stack, size_t size, void (*entry)());

}  // namespace qlorad::cuda_on_cpu
