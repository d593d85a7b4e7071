/*
 * Two refund keys on one order while the store may free the order lock of a worker that still
 * runs: Engine._recheck.
 *
 * two_keys.pml with the order lock lost once under a live holder (a PostgreSQL session that
 * ended; PostgresLeaseLocks' lease that lapsed while its holder paused). Once the lock is
 * gone, two workers can each be between their plan and their send: R23's conditional saves
 * are per key, so they do not separate them. Engine._recheck does: every worker records its
 * attempt (a conditional save) and then reads the order's other operations again before the
 * request leaves, refusing when another operation has an open attempt or has recorded an
 * attempt since the read its plan was made against. This model was a finding (P2 violated:
 * two refunds planned from the same ClsAmt); mutants/no_recheck.pml is that behaviour.
 *
 * A Closed order (ClsAmt 2 units); key 0 refunds 1 unit, key 1 everything that is left. Worker
 * 0 calls key 0 and worker 1 key 1, each until it gets an answer, and either may run the
 * sweeper between its calls (in the safety check). The lock is lost once; the gateway may
 * spoil one DoAction; queries may be served one write behind. No crash, as in lock_loss.pml,
 * and in the safety check no batch; the liveness check has the batch (after one key's refund
 * the order is a pending close, and the other key's lost refund is resolved only after the
 * batch). With crashes and the batch (-D CRASHES=1 -D BATCH=1) the safety check holds too, in
 * 63 million states and five minutes: too long for every run of the suite.
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
#ifdef LIVENESS
#define BATCH 1   /* a refund planned on a pending close is resolved only after a batch */
#else
#define BATCH 0
#endif
#endif
#ifndef SWEEPER
#define SWEEPER 1
#endif
#ifndef CALLER_SWEEPS
#define CALLER_SWEEPS 1
#endif
#ifndef CRASHES
#define CRASHES 0
#endif
#ifndef LOCKLOSS
#define LOCKLOSS 1
#endif
#ifndef FAULTS
#define FAULTS 1
#endif

#include "protocol.inc"

#ifdef LIVENESS
ltl live { TIME_FAIR -> <> (answered[0] == 1 && answered[1] == 1) }
#endif
