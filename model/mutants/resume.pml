/*
 * Mutant: a claim that resumes another owner's record (R23's takeover rule removed). A worker
 * that takes an operation over from an owner whose lease lapsed carries on as if the record
 * were its own, without resolving that owner's open attempt by R22 first. Must fail: P1.
 */
#define MUT_RESUME
#include "../one_key.pml"
