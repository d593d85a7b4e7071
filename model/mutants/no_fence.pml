/*
 * Mutant: no fence (R22 removed). A lost DoAction is judged "not done" as soon as a query
 * shows the order unchanged, however young its Timestamp: the rule that refunded twice in
 * the trials. Must fail: P1 (the key's refund applied twice).
 */
#define MUT_NO_FENCE
#include "../one_key.pml"
