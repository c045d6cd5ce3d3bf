package target

import (
	"fmt"
	"testing"
)

func TestCoalesceKeepsTheLastChangePerKey(t *testing.T) {
	m := func(route, subject string, off int64) Message {
		return Message{Route: route, Table: "products", Subject: subject, Offset: off}
	}
	in := []Message{
		m("r", "id=1", 0), m("r", "id=2", 1), m("r", "id=1", 2), m("other", "id=1", 3),
		m("r", "", 4), // a truncate: a barrier
		m("r", "id=1", 5), m("r", "id=1", 6), m("r", "id=2", 7),
	}
	var got []string
	for _, x := range Coalesce(in) {
		got = append(got, fmt.Sprintf("%s/%s@%d", x.Route, x.Subject, x.Offset))
	}
	want := []string{"r/id=2@1", "r/id=1@2", "other/id=1@3", "r/@4", "r/id=1@6", "r/id=2@7"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Coalesce = %v, want %v", got, want)
	}
}
