/*
 * One refund key while the store may free the order lock of a worker that still runs.
 *
 * PostgresOrderLocks holds an order with a session advisory lock; when that session ends
 * (the server restarts, the connection is cut) the server frees the lock and the holder goes
 * on, unaware, until a journal write is refused. Then only R23's conditional saves and
 * leases keep a second worker on the same key from moving money again. A Closed order
 * (ClsAmt 2 units), one key refunding 1 unit; worker 0 calls it until it gets an answer,
 * worker 1 calls it too or runs the sweeper; the lock is lost once; the gateway may spoil one
 * DoAction; queries may be served one write behind.
 *
 * Must hold: P1, P2, P3; with -DLIVENESS, the claim `live`.
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
ltl live { TIME_FAIR -> <> (answered[0] == 1) }
#endif
