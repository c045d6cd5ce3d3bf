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
	dst = append(dst, `{"before":`...)
	dst = appendImage(dst, c.Table, c.Before)
	dst = append(dst, `,"after":`...)
	dst = appendImage(dst, c.Table, c.After)
	ms := c.Commit.UnixMilli()
	dst = append(dst, `,"source":{"version":`...)
	dst = AppendJSONString(dst, Version)
	dst = append(dst, `,"connector":`...)
	dst = AppendJSONString(dst, c.Table.Connector)
	dst = append(dst, `,"name":`...)
	dst = AppendJSONString(dst, pipeline)
	dst = append(dst, `,"ts_ms":`...)
	dst = strconv.AppendInt(dst, ms, 10)
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
	dst = AppendJSONString(dst, c.Pos)
	for _, f := range c.SourceFields {
		dst = append(dst, ',')
		dst = AppendJSONString(dst, f.Name)
		dst = append(dst, ':')
		dst = AppendJSON(dst, f.Value)
	}
	dst = append(dst, `},"op":"`...)
	dst = append(dst, byte(c.Op))
	dst = append(dst, `","ts_ms":`...)
	dst = strconv.AppendInt(dst, ms, 10)
	if !c.Snapshot && c.TxID != "" {
		dst = append(dst, `,"transaction":{"id":`...)
		dst = AppendJSONString(dst, c.TxID)
		dst = append(dst, `,"total_order":`...)
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

func appendImage(dst []byte, t *Table, img []Value) []byte {
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
		dst = AppendJSONString(dst, t.Columns[i].Name)
		dst = append(dst, ':')
		dst = AppendJSON(dst, v)
	}
	return append(dst, '}')
}
