// Package lake is the data-lake target: routed changes become Parquet files
// (arrow-go's pqarrow) on the local filesystem or S3-compatible storage,
// made visible by commit manifests, and optionally appended to Iceberg
// tables through a SQL catalog (JDBC catalog layout) by an in-tree
// append-only Iceberg writer (iceberg*.go).
//
// Layout under the lake's root (docs/targets/lake.md):
//
//	table=<schema>.<table>/commit_date=<YYYY-MM-DD>/<topic>-<partition>-<first offset>-<last offset>.parquet
//	_plume/commits/<seq, 20 digits>.json   one manifest per commit (the truth)
//	_plume/latest.json                     hint: the newest seq (for a cheap Open)
//	_plume/pending.json                    the files of the commit being written
//	_plume/iceberg.json                    hint: the newest seq appended to Iceberg
//	_iceberg/<namespace>/<table>/metadata/ Iceberg metadata (data files stay above)
//
// A reader that honours the manifests reads exactly the files listed in
// _plume/commits/*.json, and sees every change exactly once; see Apply for
// the invariants and why they hold.
package lake
