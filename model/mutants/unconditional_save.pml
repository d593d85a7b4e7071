/*
 * Mutant: an unconditional save (R23's revision check removed). Journal.save writes whatever
 * the worker holds, even when another worker wrote the record since it read it. With the order
 * lock lost, a worker that no longer owns the operation records and sends its attempt. Must
 * fail: P1.
 */
#define MUT_UNCONDITIONAL_SAVE
#include "../lock_loss.pml"
