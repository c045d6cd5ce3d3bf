package mysql

import (
	"fmt"
	"strconv"
	"strings"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/google/uuid"
)

// binlogPos is a position in the server's binary log: the file name and the
// byte offset. Offsets Plume records are always event end offsets (the
// header's log_pos), so a position names the boundary after an event.
type binlogPos struct {
	File string
	Pos  uint32
}

func (p binlogPos) String() string { return p.File + ":" + strconv.FormatUint(uint64(p.Pos), 10) }

func (p binlogPos) IsZero() bool { return p.File == "" }

// fileSeq returns the numeric suffix of a binlog file name
// ("binlog.000042" -> 42), or -1.
func fileSeq(name string) int64 {
	i := strings.LastIndexByte(name, '.')
	if i < 0 {
		return -1
	}
	n, err := strconv.ParseInt(name[i+1:], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// Compare orders positions of one server's binlog: by file sequence number,
// then offset. It returns -1, 0 or +1.
func (p binlogPos) Compare(q binlogPos) int {
	if p.File != q.File {
		a, b := fileSeq(p.File), fileSeq(q.File)
		if a == b { // unparsable names: fall back to string order
			return strings.Compare(p.File, q.File)
		}
		if a < b {
			return -1
		}
		return 1
	}
	switch {
	case p.Pos < q.Pos:
		return -1
	case p.Pos > q.Pos:
		return 1
	}
	return 0
}

// gtidTracker keeps the GTID set (MySQL: executed set; MariaDB: one GTID
// per domain, the gtid_current_pos form) of everything up to the current
// transaction boundary.
type gtidTracker struct {
	flavor string
	set    gomysql.GTIDSet // nil when the server has no GTIDs
}

func newGTIDTracker(flavor, s string) (*gtidTracker, error) {
	t := &gtidTracker{flavor: flavor}
	if s == "" && flavor != gomysql.MariaDBFlavor {
		return t, nil
	}
	set, err := gomysql.ParseGTIDSet(flavor, s)
	if err != nil {
		return nil, fmt.Errorf("mysql: bad GTID set %q: %w", s, err)
	}
	t.set = set
	return t, nil
}

// String renders the set, "" if there is none.
func (t *gtidTracker) String() string {
	if t == nil || t.set == nil {
		return ""
	}
	return t.set.String()
}

// add records a committed transaction's GTID.
func (t *gtidTracker) add(ev replication.Event) error {
	switch e := ev.(type) {
	case *replication.MariadbGTIDEvent:
		if t.set == nil {
			t.set, _ = gomysql.ParseMariadbGTIDSet("")
		}
		g := e.GTID
		return t.set.(*gomysql.MariadbGTIDSet).AddSet(&g)
	case *replication.GTIDEvent:
		if e.GNO == 0 { // anonymous transaction
			return nil
		}
		u, err := uuid.FromBytes(e.SID)
		if err != nil {
			return err
		}
		if t.set == nil {
			s := gomysql.NewMysqlGTIDSet()
			t.set = &s
		}
		t.set.(*gomysql.MysqlGTIDSet).AddGTID(u, e.GNO)
	case *replication.GtidTaggedLogEvent:
		u, err := uuid.FromBytes(e.SID)
		if err != nil {
			return err
		}
		if t.set == nil {
			s := gomysql.NewMysqlGTIDSet()
			t.set = &s
		}
		t.set.(*gomysql.MysqlGTIDSet).AddGTIDWithTag(u, e.Tag, e.GNO)
	}
	return nil
}

// gtidString renders one transaction's GTID ("0-1-42", "uuid:42" or
// "uuid:tag:42"); "" for anonymous transactions.
func gtidString(ev replication.Event) string {
	switch e := ev.(type) {
	case *replication.MariadbGTIDEvent:
		return fmt.Sprintf("%d-%d-%d", e.GTID.DomainID, e.GTID.ServerID, e.GTID.SequenceNumber)
	case *replication.GTIDEvent:
		u, err := uuid.FromBytes(e.SID)
		if err != nil || e.GNO == 0 { // ANONYMOUS_GTID_EVENT carries no GTID
			return ""
		}
		return u.String() + ":" + strconv.FormatInt(e.GNO, 10)
	case *replication.GtidTaggedLogEvent:
		u, err := uuid.FromBytes(e.SID)
		if err != nil {
			return ""
		}
		return u.String() + ":" + e.Tag.String() + ":" + strconv.FormatInt(e.GNO, 10)
	}
	return ""
}
