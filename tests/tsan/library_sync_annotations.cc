// ThreadSanitizer builds only (-DMARLIN_SANITIZE=thread): tells TSan of the synchronization inside
// the prebuilt, uninstrumented gRPC and Abseil libraries, so that it reports races in our code and
// not the handoffs those libraries make. Linked into every executable of the TSan build.
//
// Debian builds neither gRPC nor Abseil with -fsanitize=thread. Without this file, every object
// gRPC hands from one thread to another reads as a race to TSan, thousands of reports per test: in
// gRPC's header code compiled into our binaries, and in our reactors (two OnReadDone of one call
// run on two gRPC threads, one after the other, ordered only inside libgrpc).
//
// How: this executable defines a few functions of those libraries. The dynamic linker binds every
// call that crosses a library boundary to the executable's definition first; each one calls the
// library's own (dlsym RTLD_NEXT) and marks the happens-before edge the library guarantees
// (__tsan_release on one side, __tsan_acquire on the same address on the other):
//  - absl::Mutex / absl::CondVar (grpc_core::Mutex, gpr_mu and gpr_cv in gRPC 1.51): unlocking
//    releases the mutex, locking acquires it; a condition-variable wait does both around the real
//    wait. These are all the entry points libgrpc, libgrpc++, libgpr and libabsl_* import
//    (nm -D --undefined-only) but CondVar::Signal/SignalAll, which order nothing.
//  - gRPC operations: starting a batch (grpc_call_start_batch) or requesting a call releases the
//    batch's tag; its completion acquires the tag where gRPC hands it over (grpc_cq_end_op, which
//    runs callback-API reactions or queues the event) and where a completion queue returns it
//    (grpc_completion_queue_next / _pluck). That is gRPC's contract: an operation's completion,
//    and the reaction to it, happen after the operation was started.
//  - Callback-API servers: OnDone runs once every reaction has returned (ScheduleOnDone, below).
// Each edge is one the library really makes; none orders anything it does not order itself, so
// races between our own threads stay visible. Our own code uses std::mutex and
// std::condition_variable, which TSan sees directly.
//
// What stays invisible: the libraries' own memory accesses and lock-free handoffs. TSan sees only
// the C library calls they make (memcpy, free, ...); scripts/tsan.supp has it ignore those
// (called_from_lib), library by library.
#include <dlfcn.h>
#include <grpc/grpc.h>
#include <grpcpp/support/server_callback.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/base/options.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

struct grpc_cq_completion;  // gRPC-internal; only passed through

namespace {

// The library's definition of `symbol` (mangled), the next one after this executable's.
template <typename Fn>
Fn Real(const std::string& symbol) {
  void* fn = dlsym(RTLD_NEXT, symbol.c_str());
  if (fn == nullptr) {
    std::fprintf(stderr, "library_sync_annotations: %s not found: %s\n", symbol.c_str(), dlerror());
    std::abort();
  }
  return reinterpret_cast<Fn>(fn);
}

// How `absl::` mangles, with the inline namespace of this Abseil build ("N4absl7debian3").
static_assert(ABSL_OPTION_USE_INLINE_NAMESPACE == 1, "the names below assume an inline namespace");
#define MARLIN_TSAN_STR2(x) #x
#define MARLIN_TSAN_STR(x) MARLIN_TSAN_STR2(x)
std::string Absl(const char* rest) {
  const std::string ns = MARLIN_TSAN_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  return "N4absl" + std::to_string(ns.size()) + ns + rest;
}

// Member functions are called as functions taking `this` first (Itanium C++ ABI).
using MutexFn = void (*)(absl::Mutex*);
using MutexTryFn = bool (*)(absl::Mutex*);

}  // namespace

// ---- Abseil ---------------------------------------------------------------------------------

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static const MutexFn real = Real<MutexFn>("_Z" + Absl("5Mutex4LockEv"));
  real(this);
  __tsan_acquire(this);
}

bool Mutex::TryLock() {
  static const MutexTryFn real = Real<MutexTryFn>("_Z" + Absl("5Mutex7TryLockEv"));
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::Unlock() {
  static const MutexFn real = Real<MutexFn>("_Z" + Absl("5Mutex6UnlockEv"));
  __tsan_release(this);
  real(this);
}

void CondVar::Wait(Mutex* mu) {
  using Fn = void (*)(CondVar*, Mutex*);
  static const Fn real = Real<Fn>("_Z" + Absl("7CondVar4WaitEPNS0_5MutexE"));
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  using Fn = bool (*)(CondVar*, Mutex*, Duration);
  static const Fn real =
      Real<Fn>("_Z" + Absl("7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE"));
  __tsan_release(mu);
  const bool timed_out = real(this, mu, timeout);
  __tsan_acquire(mu);
  return timed_out;
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  using Fn = bool (*)(CondVar*, Mutex*, Time);
  static const Fn real = Real<Fn>("_Z" + Absl("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE"));
  __tsan_release(mu);
  const bool timed_out = real(this, mu, deadline);
  __tsan_acquire(mu);
  return timed_out;
}

ABSL_NAMESPACE_END
}  // namespace absl

// ---- gRPC -----------------------------------------------------------------------------------

extern "C" grpc_call_error grpc_call_start_batch(grpc_call* call, const grpc_op* ops, size_t nops,
                                                 void* tag, void* reserved) {
  using Fn = grpc_call_error (*)(grpc_call*, const grpc_op*, size_t, void*, void*);
  static const Fn real = Real<Fn>("grpc_call_start_batch");
  __tsan_release(tag);
  return real(call, ops, nops, tag, reserved);
}

extern "C" grpc_call_error grpc_server_request_call(grpc_server* server, grpc_call** call,
                                                    grpc_call_details* details,
                                                    grpc_metadata_array* request_metadata,
                                                    grpc_completion_queue* cq_bound_to_call,
                                                    grpc_completion_queue* cq_for_notification,
                                                    void* tag) {
  using Fn =
      grpc_call_error (*)(grpc_server*, grpc_call**, grpc_call_details*, grpc_metadata_array*,
                          grpc_completion_queue*, grpc_completion_queue*, void*);
  static const Fn real = Real<Fn>("grpc_server_request_call");
  __tsan_release(tag);
  return real(server, call, details, request_metadata, cq_bound_to_call, cq_for_notification, tag);
}

extern "C" grpc_call_error grpc_server_request_registered_call(
    grpc_server* server, void* registered_method, grpc_call** call, gpr_timespec* deadline,
    grpc_metadata_array* request_metadata, grpc_byte_buffer** optional_payload,
    grpc_completion_queue* cq_bound_to_call, grpc_completion_queue* cq_for_notification,
    void* tag) {
  using Fn = grpc_call_error (*)(grpc_server*, void*, grpc_call**, gpr_timespec*,
                                 grpc_metadata_array*, grpc_byte_buffer**, grpc_completion_queue*,
                                 grpc_completion_queue*, void*);
  static const Fn real = Real<Fn>("grpc_server_request_registered_call");
  __tsan_release(tag);
  return real(server, registered_method, call, deadline, request_metadata, optional_payload,
              cq_bound_to_call, cq_for_notification, tag);
}

// A C++ function of libgrpc (not in its headers), called across the library's own PLT.
void grpc_cq_end_op(grpc_completion_queue* cq, void* tag, absl::Status error,
                    void (*done)(void* done_arg, grpc_cq_completion* storage), void* done_arg,
                    grpc_cq_completion* storage, bool internal) {
  using Fn = void (*)(grpc_completion_queue*, void*, absl::Status,
                      void (*)(void*, grpc_cq_completion*), void*, grpc_cq_completion*, bool);
  static const Fn real = Real<Fn>("_Z14grpc_cq_end_opP21grpc_completion_queuePv" +
                                  Absl("6StatusEPFvS1_P18grpc_cq_completionES1_S6_b"));
  __tsan_acquire(tag);  // callback completion queues may run the reaction right here
  __tsan_release(tag);  // others queue the event for _next / _pluck
  real(cq, tag, std::move(error), done, done_arg, storage, internal);
}

extern "C" grpc_event grpc_completion_queue_next(grpc_completion_queue* cq, gpr_timespec deadline,
                                                 void* reserved) {
  using Fn = grpc_event (*)(grpc_completion_queue*, gpr_timespec, void*);
  static const Fn real = Real<Fn>("grpc_completion_queue_next");
  const grpc_event event = real(cq, deadline, reserved);
  if (event.type == GRPC_OP_COMPLETE) __tsan_acquire(event.tag);
  return event;
}

extern "C" grpc_event grpc_completion_queue_pluck(grpc_completion_queue* cq, void* tag,
                                                  gpr_timespec deadline, void* reserved) {
  using Fn = grpc_event (*)(grpc_completion_queue*, void*, gpr_timespec, void*);
  static const Fn real = Real<Fn>("grpc_completion_queue_pluck");
  const grpc_event event = real(cq, tag, deadline, reserved);
  if (event.type == GRPC_OP_COMPLETE) __tsan_acquire(event.tag);
  return event;
}

// Callback-API servers: a call's OnDone runs once every reaction has returned and Finish has
// completed, counted down in ServerCallbackCall::callbacks_outstanding_; the last count may be
// taken inside libgrpc++, where TSan does not see it. The thread that schedules OnDone acquires
// what every instrumented count-down released.
void grpc::internal::ServerCallbackCall::ScheduleOnDone(bool inline_ondone) {
  using Fn = void (*)(ServerCallbackCall*, bool);
  static const Fn real = Real<Fn>("_ZN4grpc8internal18ServerCallbackCall14ScheduleOnDoneEb");
  __tsan_acquire(&callbacks_outstanding_);
  real(this, inline_ondone);
}
