// Package kafka is the `kafka` target: it re-routes a pipeline's events into
// other topics of the pipeline's own Kafka cluster or of another one, exactly
// once for read_committed consumers.
//
// Each batch the delivery layer hands over is one Kafka transaction holding
// the batch's output records and one offsets record (the input offsets the
// batch brings the target to) in a compacted single-partition topic, so
// output and input progress commit atomically. Open fences older instances
// and reads the offsets back; they are authoritative, so a replay after a
// crash produces nothing twice. See target.go for the invariants and
// docs/targets/kafka.md for the configuration.
package kafka
