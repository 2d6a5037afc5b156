package mesh

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRefusalLogBounded(t *testing.T) {
	var buf bytes.Buffer
	at := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	r := NewRefusalLog("gateway", slog.New(slog.NewTextHandler(&buf, nil)), func() time.Time { return at }, time.Second)
	logged := 0
	for i := range 1000 {
		if i == 500 {
			at = at.Add(time.Second) // a new interval: one more line
		}
		if r.Note("deadline", "request refused") {
			logged++
		}
	}
	if r.Note("queue", "request refused") {
		logged++ // another reason has its own budget
	}
	if logged != 3 {
		t.Fatalf("%d lines for 1001 refusals over 2 intervals and 2 reasons, want 3", logged)
	}
	if !strings.Contains(buf.String(), "refused_since_last_line=500") {
		t.Fatalf("second line does not count the refusals since the first:\n%s", buf.String())
	}
}
