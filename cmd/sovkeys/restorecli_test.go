package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// A restore that stopped part way is run again: the streams it restored
// (exactly as the manifest says) are skipped; a stream of another origin,
// one that differs from the manifest, or a target holding all of the
// backup's streams already is refused.
func TestRestoreGoesOnAfterAPartialRun(t *testing.T) {
	_, _, js := natstest.Run(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "A", Subjects: []string{"a.>"}}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := js.Publish(ctx, "a.x", []byte("m")); err != nil {
			t.Fatal(err)
		}
	}
	m := drManifest{Streams: []drStream{{Name: "A", Messages: 2, LastSeq: 2}, {Name: "B", Messages: 1, LastSeq: 1}}}
	done, err := restoredBefore(ctx, js, m, []string{"A"})
	if err != nil || !done["A"] || done["B"] {
		t.Fatalf("partial run: %v %v", done, err)
	}
	for name, tc := range map[string]struct {
		m        drManifest
		existing []string
		want     string
	}{
		"other content": {drManifest{Streams: []drStream{{Name: "A", Messages: 3, LastSeq: 3}, {Name: "B"}}}, []string{"A"}, "streams A"},
		"other stream":  {m, []string{"A", "C"}, "streams C"},
		"all restored":  {drManifest{Streams: []drStream{{Name: "A", Messages: 2, LastSeq: 2}}}, []string{"A"}, "restored here already"},
	} {
		if _, err := restoredBefore(ctx, js, tc.m, tc.existing); !errors.Is(err, errRestoreRefused) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
