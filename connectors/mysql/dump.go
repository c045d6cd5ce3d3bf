package mysql

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/go-mysql-org/go-mysql/client"
	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
)

// dumpConn is one binlog dump connection: the replica registration and dump
// command of go-mysql's BinlogSyncer (registerSlave, writeBinlogDump*,
// without semi-sync), and a read loop of Plume's own that parses each
// packet with go-mysql's BinlogParser.
//
// Why not BinlogSyncer: it reads every packet into a fresh buffer
// (packet.Conn.ReadPacket), and at 1 KB rows that copy was 65% of the bytes
// the MySQL source allocated per event and most of its GC work (bench/README.md).
// Here packets are read into buffers that come back once the streamer is
// done with them.
//
// Buffer ownership. A rows event's values point into its packet: go-mysql
// returns strings and byte slices over the packet without copying. So:
//   - Only rows events are parsed in a pooled buffer, and the buffer travels
//     with the event (streamItem.buf) to the streamer, which releases it
//     after handling the event (streamer.run). Every other event is parsed
//     from a copy of its own: go-mysql keeps table maps (BinlogParser caches
//     them), and the streamer keeps positions and names of rotate, GTID and
//     query events.
//   - The streamer keeps nothing of a rows event's values after handling it:
//     capture.Emitter does not keep c's images or the values in them, and
//     the snapshot's dirty tracker keys by a rendered subject (a new string).
//   - At most len(free) buffers are pooled; a buffer that grew beyond
//     maxPooledPacket (one huge row) goes to the GC instead.
type dumpConn struct {
	c      *client.Conn
	parser *replication.BinlogParser
	free   chan *bytes.Buffer
	rows   *rowsDecoder
}

// maxPooledPacket is the largest buffer kept for reuse.
const maxPooledPacket = 1 << 20

// dumpConfig is what a dump connection needs.
type dumpConfig struct {
	addr      string // host:port, or a unix socket path
	port      uint16 // addr's port (0 for a socket), reported to the server on registration
	user      string
	password  string
	tls       *tls.Config
	dialer    client.Dialer
	serverID  uint32
	flavor    string
	hostname  string // reported to the server as the replica's host (SHOW SLAVE HOSTS)
	heartbeat time.Duration
	rows      *rowsDecoder
}

// openDump connects, registers as a replica and starts the dump from pos,
// or from gset when it is not nil. Packet buffers come from and go back to
// free.
func openDump(ctx context.Context, cfg dumpConfig, pos binlogPos, gset gomysql.GTIDSet, free chan *bytes.Buffer) (*dumpConn, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := client.ConnectWithDialer(cctx, "", cfg.addr, cfg.user, cfg.password, "", cfg.dialer, func(c *client.Conn) error {
		if cfg.tls != nil {
			c.SetTLSConfig(cfg.tls)
		}
		c.SetAttributes(map[string]string{"_client_role": "binary_log_listener"})
		return nil
	})
	if err != nil {
		return nil, err
	}
	d := &dumpConn{c: c, parser: replication.NewBinlogParser(), free: free, rows: cfg.rows}
	d.parser.SetFlavor(cfg.flavor)
	d.parser.SetParseTime(false)
	d.parser.SetTimestampStringLocation(time.UTC)
	d.parser.SetRowsEventDecodeFunc(cfg.rows.decode)
	if err := d.start(cfg, pos, gset); err != nil {
		c.Close()
		return nil, err
	}
	return d, nil
}

func (d *dumpConn) start(cfg dumpConfig, pos binlogPos, gset gomysql.GTIDSet) error {
	// The server sends events without checksums once the replica says it
	// knows about them (as mysqlbinlog does); the parser learns the
	// algorithm from the format description event either way.
	r, err := d.c.Execute("SHOW GLOBAL VARIABLES LIKE 'BINLOG_CHECKSUM'")
	if err != nil {
		return err
	}
	if s, _ := r.GetString(0, 1); s != "" {
		if _, err := d.c.Execute(`SET @master_binlog_checksum='NONE', @source_binlog_checksum='NONE'`); err != nil {
			return err
		}
	}
	if cfg.flavor == gomysql.MariaDBFlavor {
		// MARIA_SLAVE_CAPABILITY_GTID: send GTID events (MariaDB >= 10.0.1).
		if _, err := d.c.Execute("SET @mariadb_slave_capability=4"); err != nil {
			return fmt.Errorf("set @mariadb_slave_capability=4: %w", err)
		}
	}
	if cfg.heartbeat > 0 { // in nanoseconds
		if _, err := d.c.Execute(fmt.Sprintf("SET @master_heartbeat_period = %d, @source_heartbeat_period = %d", cfg.heartbeat, cfg.heartbeat)); err != nil {
			return err
		}
	}
	var id [16]byte
	_, _ = rand.Read(id[:])
	id[6], id[8] = id[6]&0x0f|0x40, id[8]&0x3f|0x80 // version 4, RFC 4122 variant
	u := fmt.Sprintf("%x-%x-%x-%x-%x", id[0:4], id[4:6], id[6:8], id[8:10], id[10:])
	if _, err := d.c.Execute(fmt.Sprintf("SET @slave_uuid = '%s', @replica_uuid = '%s'", u, u)); err != nil {
		return err
	}
	if err := d.writeRegister(cfg); err != nil {
		return err
	}
	if _, err := d.c.ReadOKPacket(); err != nil {
		return err
	}
	switch {
	case gset == nil:
		return d.writeDump(cfg, pos.File, pos.Pos)
	case cfg.flavor == gomysql.MariaDBFlavor:
		// The start is the session's @slave_connect_state; strict mode makes
		// the server refuse a GTID it does not have instead of skipping.
		if _, err := d.c.Execute(fmt.Sprintf("SET @slave_connect_state='%s'", gset.String())); err != nil {
			return fmt.Errorf("set @slave_connect_state: %w", err)
		}
		if _, err := d.c.Execute("SET @slave_gtid_strict_mode=1"); err != nil {
			return fmt.Errorf("set @slave_gtid_strict_mode=1: %w", err)
		}
		return d.writeDump(cfg, "", 0)
	default:
		return d.writeDumpGTID(cfg, gset)
	}
}

// writeRegister sends COM_REGISTER_SLAVE.
func (d *dumpConn) writeRegister(cfg dumpConfig) error {
	host := cfg.hostname
	if len(host) > 255 {
		host = host[:255]
	}
	user := cfg.user
	if len(user) > 255 {
		user = user[:255]
	}
	b := make([]byte, 4, 4+1+4+1+len(host)+1+len(user)+1+2+4+4)
	b = append(b, gomysql.COM_REGISTER_SLAVE)
	b = binary.LittleEndian.AppendUint32(b, cfg.serverID)
	b = append(b, byte(len(host)))
	b = append(b, host...)
	b = append(b, byte(len(user)))
	b = append(b, user...)
	b = append(b, 0) // no password
	b = binary.LittleEndian.AppendUint16(b, cfg.port)
	b = binary.LittleEndian.AppendUint32(b, 0) // replication rank, unused
	b = binary.LittleEndian.AppendUint32(b, 0) // source id: 0 is fine
	d.c.ResetSequence()
	return d.c.WritePacket(b)
}

// writeDump sends COM_BINLOG_DUMP from file:pos.
func (d *dumpConn) writeDump(cfg dumpConfig, file string, pos uint32) error {
	b := make([]byte, 4, 4+1+4+2+4+len(file))
	b = append(b, gomysql.COM_BINLOG_DUMP)
	b = binary.LittleEndian.AppendUint32(b, pos)
	b = binary.LittleEndian.AppendUint16(b, 0) // flags: block at the end of the binlog
	b = binary.LittleEndian.AppendUint32(b, cfg.serverID)
	b = append(b, file...)
	d.c.ResetSequence()
	return d.c.WritePacket(b)
}

// writeDumpGTID sends MySQL's COM_BINLOG_DUMP_GTID from gset.
func (d *dumpConn) writeDumpGTID(cfg dumpConfig, gset gomysql.GTIDSet) error {
	g := gset.Encode()
	b := make([]byte, 4, 4+1+2+4+4+8+4+len(g))
	b = append(b, gomysql.COM_BINLOG_DUMP_GTID)
	b = binary.LittleEndian.AppendUint16(b, 0) // flags
	b = binary.LittleEndian.AppendUint32(b, cfg.serverID)
	b = binary.LittleEndian.AppendUint32(b, 0) // file name length: none
	b = binary.LittleEndian.AppendUint64(b, 4) // position
	b = binary.LittleEndian.AppendUint32(b, uint32(len(g)))
	b = append(b, g...)
	d.c.ResetSequence()
	return d.c.WritePacket(b)
}

// pooledEvent reports whether events of type t are parsed in a pooled
// buffer: the rows events, whose values the streamer is done with once it
// has handled them (see dumpConn).
func pooledEvent(t replication.EventType) bool {
	switch t {
	case replication.WRITE_ROWS_EVENTv0, replication.UPDATE_ROWS_EVENTv0, replication.DELETE_ROWS_EVENTv0,
		replication.WRITE_ROWS_EVENTv1, replication.UPDATE_ROWS_EVENTv1, replication.DELETE_ROWS_EVENTv1,
		replication.WRITE_ROWS_EVENTv2, replication.UPDATE_ROWS_EVENTv2, replication.DELETE_ROWS_EVENTv2,
		replication.PARTIAL_UPDATE_ROWS_EVENT:
		return true
	}
	return false
}

// run reads events until the connection fails or ctx ends, sending each to
// out; a failure is sent as the last item.
func (d *dumpConn) run(ctx context.Context, out chan<- streamItem) {
	send := func(it streamItem) bool {
		select {
		case out <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		buf := d.get()
		if err := d.c.ReadPacketTo(buf); err != nil {
			if ctx.Err() == nil {
				send(streamItem{err: err})
			}
			return
		}
		data := buf.Bytes()
		switch data[0] {
		case gomysql.OK_HEADER:
		case gomysql.ERR_HEADER:
			send(streamItem{err: d.c.HandleErrorPacket(bytes.Clone(data))})
			return
		case gomysql.EOF_HEADER:
			// Only sent for a non-blocking dump, which this is not.
			d.release(buf)
			continue
		default:
			send(streamItem{err: fmt.Errorf("invalid binlog stream packet header 0x%02x", data[0])})
			return
		}
		data = data[1:]
		pooled := len(data) >= replication.EventHeaderSize && pooledEvent(replication.EventType(data[4]))
		if !pooled {
			data = bytes.Clone(data)
			d.release(buf)
			buf = nil
		}
		// Only a plain rows event's row data may be left to the streamer:
		// it stays in the pooled packet until the event is handled.
		d.rows.allow = pooled && replication.EventType(data[4]) != replication.PARTIAL_UPDATE_ROWS_EVENT
		ev, err := d.parser.Parse(data)
		rows := d.rows.take()
		if err != nil {
			send(streamItem{err: err})
			return
		}
		if !send(streamItem{ev: ev, buf: buf, rows: rows}) {
			return
		}
	}
}

func (d *dumpConn) get() *bytes.Buffer {
	select {
	case b := <-d.free:
		b.Reset()
		return b
	default:
		return new(bytes.Buffer)
	}
}

func (d *dumpConn) release(b *bytes.Buffer) { releasePacket(d.free, b) }

// releasePacket puts a packet buffer whose event has been handled back in
// free, unless free is full or the buffer grew too large to keep.
func releasePacket(free chan *bytes.Buffer, b *bytes.Buffer) {
	if b == nil || b.Cap() > maxPooledPacket {
		return
	}
	select {
	case free <- b:
	default:
	}
}

// close ends the connection; a blocked run returns.
func (d *dumpConn) close() { d.c.Close() }
