/*
 * A refund on a pending close whose ClsAmt moves only at the batch: R22's batch clause.
 *
 * The order is ToClose, a capture of 2 units not settled yet, and the merchant's ClsAmt
 * shows a refund only when the daily batch settles it (the emulator's
 * refund_lowers_closed_amount_at_once=False). One key refunds 1 unit; worker 0 calls it until
 * it gets an answer, worker 1 calls it too or runs the sweeper. A worker may crash at any
 * step, the gateway may spoil one DoAction, queries may be served one write behind, and the
 * batch runs at any moment, as often as it likes.
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
#define AT_ONCE 0
#define SETTLED 0
#define BATCH 1
#ifndef SWEEPER
#define SWEEPER 1
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
ltl live { TIME_FAIR -> <> (answered[0] == 1) }
#endif
