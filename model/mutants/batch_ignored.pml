/*
 * Mutant: "unchanged" trusted before the batch (R22's batch clause removed). For a refund on
 * a pending close whose ClsAmt moves only at the batch, the fence is Timestamp + 600 s +
 * margin, not the first batch after it. Must fail: P1.
 */
#define MUT_BATCH_IGNORED
#include "../pending_close.pml"
