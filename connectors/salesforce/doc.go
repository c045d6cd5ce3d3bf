// Package salesforce is the "salesforce" target: it keeps the records of
// one sObject type (Product2, PricebookEntry, Account, ...) in sync with
// the rows routed to it, by upserting on an external ID field.
//
// Changes go through sObject Collections upserts of up to 200 records
// (allOrNone=false), or, for a batch of at least bulk_threshold upserts,
// through a Bulk API 2.0 ingest job. Deletes look the records up by
// external ID and delete them, or upsert a field such as IsActive=false.
// Per-record failures are dead-lettered with Salesforce's statusCode and
// message; REQUEST_LIMIT_EXCEEDED, UNABLE_TO_LOCK_ROW and 5xx answers are
// retried. The org's API usage (Sforce-Limit-Info) is kept under a share of
// its daily limit by holding deliveries.
//
// Exactly-once effect: a batch is checkpointed only after Salesforce has
// acknowledged every record of it, and every write is idempotent (an upsert
// by external ID), so a replay after a crash creates no duplicate records.
// See docs/targets/salesforce.md.
//
// The subpackage sfdouble is a faithful in-process double of the API for
// tests and benchmarks.
package salesforce
