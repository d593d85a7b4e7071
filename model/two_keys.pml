/*
 * Two refund keys on one order: the order lock, Engine.unresolved and Engine._check_fresh.
 *
 * A Closed order (capture settled, ClsAmt 2 units); key 0 refunds 1 unit, key 1 refunds
 * everything that is left. Worker 0 calls key 0 and worker 1 key 1, each until it gets an
 * answer, and either may run the sweeper between its calls (in the safety check). A worker may
 * crash at any step; the order lock is freed only when its holder dies. The gateway may spoil
 * one DoAction; queries may be served one write behind; the batch may run at any moment.
 *
 * Must hold: P1, P2, P3; with -DLIVENESS, the claim `live`.
 */
#ifndef NW
#define NW 2
#endif
#define NK 2
#define CAP 2
#define AMT0 1
#define AMT1 0
#define AT_ONCE 1
#define SETTLED 1
#ifndef BATCH
#define BATCH 1
#endif
#ifndef SWEEPER
#define SWEEPER 1
#endif
#ifndef CALLER_SWEEPS
#define CALLER_SWEEPS 1
#endif
#ifndef CRASHES
#define CRASHES 1
#endif
#ifndef LOCKLOSS
#define LOCKLOSS 0
#endif
#ifndef FAULTS
#define FAULTS 1
#endif

#include "protocol.inc"

#ifdef LIVENESS
ltl live { TIME_FAIR -> <> (answered[0] == 1 && answered[1] == 1) }
#endif
