#include "fiber.h"

#include <cstdint>

#if defined(__x86_64__) && defined(__ELF__)
// qlorad_fiber_switch(void** save, void* load): pushes the System V callee-saved registers,
// stores the stack pointer in *save, loads `load`, pops the registers saved there and returns
// into that context. The floating-point control words are not switched: no kernel changes them.
asm(R"(
  .pushsection .text
  .p2align 4
  .globl qlorad_fiber_switch
  .type qlorad_fiber_switch, @function
qlorad_fiber_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size qlorad_fiber_switch, .-qlorad_fiber_switch
  .popsection
)");
extern "C" void qlorad_fiber_switch(void** save, void* load);
#endif

namespace qlorad::cuda_on_cpu {

#if defined(__x86_64__) && defined(__ELF__)

void SwitchFiber(FiberContext& from, FiberContext& to) {
  qlorad_fiber_switch(&from.stack_pointer, to.stack_pointer);
}

void MakeFiber(FiberContext& context, char* stack, size_t size, void (*entry)()) {
  // From the 16-byte aligned top: a return-address slot `entry` never uses, `entry` itself
  // (the switch's `ret` lands there with the stack as a call leaves it: 8 past a multiple of
  // 16), and six zeroed registers for the switch to pop.
  auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t{15};
  auto* slots = reinterpret_cast<void**>(top);
  slots[-1] = nullptr;
  slots[-2] = reinterpret_cast<void*>(entry);
  for (int r = 3; r <= 8; ++r) slots[-r] = nullptr;
  context.stack_pointer = &slots[-8];
}

#else

void SwitchFiber(FiberContext& from, FiberContext& to) { swapcontext(&from.context, &to.context); }

void MakeFiber(FiberContext& context, char* stack, size_t size, void (*entry)()) {
  getcontext(&context.context);
  context.context.uc_stack.ss_sp = stack;
  context.context.uc_stack.ss_size = size;
  context.context.uc_link = nullptr;
  makecontext(&context.context, entry, 0);
}

#endif

}  // namespace qlorad::cuda_on_cpu
