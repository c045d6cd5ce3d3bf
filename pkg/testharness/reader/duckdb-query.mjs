// Runs one SQL query (read from stdin) in an in-memory DuckDB and prints the
// rows as a JSON array of objects. Used by testharness.DuckDBQuery as an
// independent reader of the Parquet files Plume writes: DuckDB's own
// Parquet reader, not Plume's code.
import { DuckDBInstance } from '@duckdb/node-api';

let sql = '';
for await (const chunk of process.stdin) sql += chunk;
const inst = await DuckDBInstance.create(':memory:');
const conn = await inst.connect();
const reader = await conn.runAndReadAll(sql);
process.stdout.write(JSON.stringify(reader.getRowObjectsJson()));
