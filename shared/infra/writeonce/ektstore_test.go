package writeonce

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestValidName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ok   bool
	}{
		{"tenant-1", true},
		{"a", true},
		{"ekt_v1.vpc-0abc", true},
		{".hidden", true},
		{"...", true},
		{strings.Repeat("a", MaxNameLen), true},
		{"", false},
		{".", false},
		{"..", false},
		{strings.Repeat("a", MaxNameLen+1), false},
		{"Tenant", false},
		{"a/b", false},
		{"a b", false},
		{"a*", false},
		{"a>", false},
		{"é", false},
		{"a\x00", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.name), func(t *testing.T) {
			if got := ValidName(tt.name); got != tt.ok {
				t.Fatalf("ValidName(%q) = %v, want %v", tt.name, got, tt.ok)
			}
		})
	}
}

// testStore runs the Store contract against a fresh store from newStore.
func testStore(t *testing.T, newStore func(t *testing.T) Store) {
	t.Run("RoundTrip", func(t *testing.T) {
		s := newStore(t)
		ctx := t.Context()
		for _, name := range []string{"tenant-a", "x", ".dots.in.name.", strings.Repeat("z", MaxNameLen)} {
			data := []byte("ekt for " + name)
			if err := s.Create(ctx, name, data); err != nil {
				t.Fatalf("Create(%q): %v", name, err)
			}
			got, err := s.Get(ctx, name)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("Get(%q) = %q, %v; want %q", name, got, err, data)
			}
		}
		big := bytes.Repeat([]byte{0xA5}, MaxDataSize)
		if err := s.Create(ctx, "max-size", big); err != nil {
			t.Fatalf("Create(max size): %v", err)
		}
		if got, err := s.Get(ctx, "max-size"); err != nil || !bytes.Equal(got, big) {
			t.Fatalf("Get(max size): %d bytes, %v", len(got), err)
		}
	})

	t.Run("SecondCreateExists", func(t *testing.T) {
		s := newStore(t)
		ctx := t.Context()
		first := []byte("first")
		if err := s.Create(ctx, "shared-ekt", first); err != nil {
			t.Fatal(err)
		}
		for _, again := range [][]byte{[]byte("second"), first} {
			if err := s.Create(ctx, "shared-ekt", again); !errors.Is(err, ErrExists) {
				t.Fatalf("Create(%q) again: %v, want ErrExists", again, err)
			}
		}
		if got, err := s.Get(ctx, "shared-ekt"); err != nil || !bytes.Equal(got, first) {
			t.Fatalf("Get = %q, %v; want %q", got, err, first)
		}
		stored, created, err := CreateOrGet(ctx, s, "shared-ekt", []byte("third"))
		if err != nil || created || !bytes.Equal(stored, first) {
			t.Fatalf("CreateOrGet(taken) = %q, %v, %v; want %q, false, nil", stored, created, err, first)
		}
		stored, created, err = CreateOrGet(ctx, s, "fresh", []byte("mine"))
		if err != nil || !created || string(stored) != "mine" {
			t.Fatalf("CreateOrGet(fresh) = %q, %v, %v", stored, created, err)
		}
	})

	t.Run("ConcurrentCreators", func(t *testing.T) {
		s := newStore(t)
		ctx := t.Context()
		const n = 16
		var (
			wg     sync.WaitGroup
			mu     sync.Mutex
			wins   []int
			stored = make([][]byte, n)
			errs   = make([]error, n)
		)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				data := fmt.Appendf(nil, "candidate %02d", i)
				err := s.Create(ctx, "contested", data)
				switch {
				case err == nil:
					mu.Lock()
					wins = append(wins, i)
					mu.Unlock()
				case !errors.Is(err, ErrExists):
					errs[i] = fmt.Errorf("creator %d: %w", i, err)
					return
				}
				stored[i], errs[i] = s.Get(ctx, "contested")
			})
		}
		close(start)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		if len(wins) != 1 {
			t.Fatalf("%d creators won (%v), want exactly 1", len(wins), wins)
		}
		want := fmt.Appendf(nil, "candidate %02d", wins[0])
		for i, got := range stored {
			if !bytes.Equal(got, want) {
				t.Errorf("reader %d saw %q, want the winner's %q", i, got, want)
			}
		}
	})

	t.Run("Invalid", func(t *testing.T) {
		s := newStore(t)
		ctx := t.Context()
		tests := []struct {
			label string
			name  string
			data  []byte
		}{
			{"empty name", "", []byte("x")},
			{"dot", ".", []byte("x")},
			{"dotdot", "..", []byte("x")},
			{"slash", "a/b", []byte("x")},
			{"upper", "ABC", []byte("x")},
			{"wildcard", "a*", []byte("x")},
			{"too long", strings.Repeat("a", MaxNameLen+1), []byte("x")},
			{"empty data", "ok-name", nil},
			{"too big", "ok-name", make([]byte, MaxDataSize+1)},
		}
		for _, tt := range tests {
			t.Run(tt.label, func(t *testing.T) {
				if err := s.Create(ctx, tt.name, tt.data); !errors.Is(err, ErrInvalid) {
					t.Fatalf("Create: %v, want ErrInvalid", err)
				}
				if !ValidName(tt.name) {
					if _, err := s.Get(ctx, tt.name); !errors.Is(err, ErrInvalid) {
						t.Fatalf("Get: %v, want ErrInvalid", err)
					}
				}
			})
		}
		// A rejected Create stored nothing.
		if _, err := s.Get(ctx, "ok-name"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get after rejected creates: %v, want ErrNotFound", err)
		}
	})

	t.Run("GetMissing", func(t *testing.T) {
		s := newStore(t)
		if _, err := s.Get(t.Context(), "never-created"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get: %v, want ErrNotFound", err)
		}
	})
}

// errStore is a Store whose Create and Get return fixed results.
type errStore struct {
	createErr, getErr error
	data              []byte
}

func (e errStore) Create(context.Context, string, []byte) error { return e.createErr }
func (e errStore) Get(context.Context, string) ([]byte, error)  { return e.data, e.getErr }
func (e errStore) Backend() string                              { return "test" }

func TestCreateOrGetErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	tests := []struct {
		label string
		s     errStore
		want  error
	}{
		{"create fails", errStore{createErr: boom}, boom},
		{"read back fails", errStore{createErr: ErrExists, getErr: ErrNotFound}, ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.label, func(t *testing.T) {
			_, created, err := CreateOrGet(t.Context(), tt.s, "n", []byte("d"))
			if !errors.Is(err, tt.want) || created {
				t.Fatalf("CreateOrGet = created %v, %v; want %v", created, err, tt.want)
			}
		})
	}
}
