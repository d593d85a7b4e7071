/*
 * Finding: two keys on one order while the order lock can be lost under a live holder.
 *
 * two_keys.pml holds, and lock_loss.pml holds: R23's leases and conditional saves protect one
 * key when the lock is lost. They do not protect two keys of the same order: a worker whose
 * lock the store freed (a PostgreSQL session ended; PostgresLeaseLocks' lease expired while it
 * paused) has already checked Engine.unresolved and read the order, and goes on to record and
 * send its refund while another worker, now holding the lock, records and sends a refund of
 * another key planned from the same ClsAmt. Every save is conditional on its own record's
 * revision, and nothing is conditional on the order. SPIN finds a trail in which the two
 * refunds together exceed the capture (P2). Not a model that must hold: it documents what the
 * order lock still carries alone (docs/safety.md, "What is not proven").
 */
#define LOCKLOSS 1
#include "../two_keys.pml"
