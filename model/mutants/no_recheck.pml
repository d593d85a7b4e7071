/*
 * Mutant: no recheck (Engine._recheck's verdict ignored). An attempt leaves once it is
 * recorded, whatever the order's other operations show when read again: with the order lock
 * lost under a live holder, a refund planned from a ClsAmt another key's refund has changed
 * since is sent. Must fail: P2 (the refunds applied exceed the capture), the run the model
 * found before Engine._recheck.
 */
#define MUT_NO_RECHECK
#include "../cross_key_lock_loss.pml"
