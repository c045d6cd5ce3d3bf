package event

import "strconv"

// Version is Plume's version, written into every envelope's source block.
// cmd/plume sets it at start-up from the build.
var Version = "dev"

// AppendEnvelope appends the Debezium-compatible JSON envelope of c, the
// CloudEvent's data, to dst. The layout follows Debezium's value envelope:
//
//	{"before":{..}|null,"after":{..}|null,
//	 "source":{"version","connector","name","ts_ms","snapshot","db",["schema",]"table",["txId",]"position", connector fields..},
//	 "op":"c|u|d|r|t","ts_ms":N,
//	 ["transaction":{"id","total_order","data_collection_order"},]
//	 ["unchanged":["col",..]]}
//
// Unlike Debezium, the top-level ts_ms is the commit time, not the processing
// time, so re-reading a change yields byte-identical data. pipeline is the
// pipeline name (Debezium's source.name).
func AppendEnvelope(dst []byte, pipeline string, c *Change) []byte {
	return appendEnvelope(dst, pipeline, c, nil)
}

// appendEnvelope writes the envelope from its pieces. With tc (the
// encoder's cache for c's table, prepared for c's transaction) the pieces
// that repeat for every row of a transaction and table come from tc
// instead of being rendered again; without it everything is rendered. The
// bytes are the same either way (TestEnvelopeCacheMatchesUncached).
func appendEnvelope(dst []byte, pipeline string, c *Change, tc *tableCache) []byte {
	var keys [][]byte
	if tc != nil {
		keys = tc.colKeys
	}
	dst = append(dst, `{"before":`...)
	dst = appendImage(dst, c.Table, keys, c.Before)
	dst = append(dst, `,"after":`...)
	dst = appendImage(dst, c.Table, keys, c.After)
	if tc != nil {
		dst = append(dst, tc.srcHead...)
	} else {
		dst = appendSourceHead(dst, pipeline, c)
	}
	for i, f := range c.SourceFields {
		if tc != nil {
			dst = append(dst, tc.fieldKey(i, f.Name)...)
		} else {
			dst = appendFieldKey(dst, f.Name)
		}
		dst = AppendJSON(dst, f.Value)
	}
	dst = append(dst, `},"op":"`...)
	dst = append(dst, byte(c.Op))
	if tc != nil {
		dst = append(dst, tc.tail...)
	} else {
		dst = appendTail(dst, c)
	}
	if inTransactionBlock(c) {
		dst = strconv.AppendInt(dst, c.Index+1, 10)
		dst = append(dst, `,"data_collection_order":`...)
		dst = strconv.AppendInt(dst, c.TableIndex, 10)
		dst = append(dst, '}')
	}
	first := true
	for _, img := range [][]Value{c.Before, c.After} {
		for i, v := range img {
			if _, ok := v.(Unchanged); !ok {
				continue
			}
			if first {
				dst = append(dst, `,"unchanged":[`...)
				first = false
			} else {
				dst = append(dst, ',')
			}
			dst = AppendJSONString(dst, c.Table.Columns[i].Name)
		}
		if !first {
			break // listed from the first image that has them
		}
	}
	if !first {
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// appendSourceHead appends the source block up to its connector fields:
// `,"source":{"version":..,"position":"<pos>"`. It depends only on the
// pipeline, c's table and c's transaction (commit time, id, position,
// snapshot flag).
func appendSourceHead(dst []byte, pipeline string, c *Change) []byte {
	dst = append(dst, `,"source":{"version":`...)
	dst = AppendJSONString(dst, Version)
	dst = append(dst, `,"connector":`...)
	dst = AppendJSONString(dst, c.Table.Connector)
	dst = append(dst, `,"name":`...)
	dst = AppendJSONString(dst, pipeline)
	dst = append(dst, `,"ts_ms":`...)
	dst = strconv.AppendInt(dst, c.Commit.UnixMilli(), 10)
	if c.Snapshot {
		dst = append(dst, `,"snapshot":"true"`...)
	} else {
		dst = append(dst, `,"snapshot":"false"`...)
	}
	dst = append(dst, `,"db":`...)
	dst = AppendJSONString(dst, c.Table.Database)
	if c.Table.Schema != "" {
		dst = append(dst, `,"schema":`...)
		dst = AppendJSONString(dst, c.Table.Schema)
	}
	dst = append(dst, `,"table":`...)
	dst = AppendJSONString(dst, c.Table.Name)
	if c.TxID != "" {
		dst = append(dst, `,"txId":`...)
		dst = AppendJSONString(dst, c.TxID)
	}
	dst = append(dst, `,"position":`...)
	return AppendJSONString(dst, c.Pos)
}

// appendTail appends what follows the op up to the row's own numbers:
// `","ts_ms":N` and, for a transaction's change, the transaction block's
// start `,"transaction":{"id":"<txid>","total_order":`. It depends only on
// c's transaction.
func appendTail(dst []byte, c *Change) []byte {
	dst = append(dst, `","ts_ms":`...)
	dst = strconv.AppendInt(dst, c.Commit.UnixMilli(), 10)
	if inTransactionBlock(c) {
		dst = append(dst, `,"transaction":{"id":`...)
		dst = AppendJSONString(dst, c.TxID)
		dst = append(dst, `,"total_order":`...)
	}
	return dst
}

// appendFieldKey appends `,"name":`, a source field's key.
func appendFieldKey(dst []byte, name string) []byte {
	dst = append(dst, ',')
	dst = AppendJSONString(dst, name)
	return append(dst, ':')
}

func inTransactionBlock(c *Change) bool { return !c.Snapshot && c.TxID != "" }

// appendImage appends a row image as a JSON object. keys, when not nil,
// holds each column's rendered `"name":`.
func appendImage(dst []byte, t *Table, keys [][]byte, img []Value) []byte {
	if img == nil {
		return append(dst, "null"...)
	}
	dst = append(dst, '{')
	n := 0
	for i, v := range img {
		if _, ok := v.(Unchanged); ok {
			continue
		}
		if n > 0 {
			dst = append(dst, ',')
		}
		n++
		if keys != nil {
			dst = append(dst, keys[i]...)
		} else {
			dst = AppendJSONString(dst, t.Columns[i].Name)
			dst = append(dst, ':')
		}
		dst = AppendJSON(dst, v)
	}
	return append(dst, '}')
}
