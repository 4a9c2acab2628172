// The emulator's fibers: a stack and a saved context per emulated thread. On x86-64 a switch
// saves the callee-saved registers and the FPU control words on the stack and swaps stack
// pointers (a few nanoseconds; ucontext's swapcontext makes a signal-mask system call each time,
// which made a run several times slower). Under AddressSanitizer, and elsewhere, ucontext, which
// the sanitizer runtime knows how to follow.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)

extern "C" void emu_fiber_switch(void** save_sp, void* load_sp);

asm(R"(
.text
.globl emu_fiber_switch
.type emu_fiber_switch,@function
emu_fiber_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size emu_fiber_switch, .-emu_fiber_switch
.section .note.GNU-stack,"",@progbits
.text
)");

namespace emu {

struct Fiber {
  void* sp = nullptr;
};

// Prepares `f` to run entry() (which must never return) on the given stack when switched to.
inline void fiber_start(Fiber* f, char* stack, size_t bytes, void (*entry)()) {
  auto top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
  auto* slots = reinterpret_cast<uint64_t*>(top - 72);  // control words, six registers, entry
  const uint32_t mxcsr = 0x1f80, fpu_control = 0x037f;
  slots[0] = mxcsr | (uint64_t(fpu_control) << 32);
  for (int i = 1; i <= 6; ++i) slots[i] = 0;
  slots[7] = reinterpret_cast<uint64_t>(entry);
  slots[8] = 0;
  f->sp = slots;
}
inline void fiber_switch(Fiber* from, Fiber* to) { emu_fiber_switch(&from->sp, to->sp); }

}  // namespace emu

#else

#include <ucontext.h>

namespace emu {

struct Fiber {
  ucontext_t context;
};
inline void fiber_start(Fiber* f, char* stack, size_t bytes, void (*entry)()) {
  getcontext(&f->context);
  f->context.uc_stack.ss_sp = stack;
  f->context.uc_stack.ss_size = bytes;
  f->context.uc_link = nullptr;
  makecontext(&f->context, entry, 0);
}
inline void fiber_switch(Fiber* from, Fiber* to) { swapcontext(&from->context, &to->context); }

}  // namespace emu

#endif
