/*
 * One refund key, workers that race for it: R23 under imperfect locks.
 *
 * A Closed order (capture settled, ClsAmt 2 units) and one idempotency key refunding 1 unit.
 * Worker 0 is the shop's caller for the key and retries it until it gets an answer; worker 1
 * (and 2, with NW 3) calls the same key or runs the sweeper, at any time. A worker may crash
 * at any step, the store may free the order lock of a worker that still runs, and the gateway
 * may spoil one DoAction (reply lost, applied late or never, never reaching ECPay). Queries
 * may be served one write behind.
 *
 * Must hold: P1, P2, P3 (the assertions of protocol.inc); with -DLIVENESS, the claim `live`.
 */
#ifndef NW
#define NW 2
#endif
#define NK 1
#define CAP 2
#define AMT0 1
#define AMT1 0
#define AT_ONCE 1
#define SETTLED 1
#ifndef BATCH
#define BATCH 0
#endif
#ifndef SWEEPER
#define SWEEPER 1
#endif
#ifndef CRASHES
#define CRASHES 2
#endif
#ifndef LOCKLOSS
#define LOCKLOSS 0
#endif
#ifndef FAULTS
#define FAULTS 1
#endif

#include "protocol.inc"

#ifdef LIVENESS
ltl live { TIME_FAIR -> <> (answered[0] == 1) }
#endif
