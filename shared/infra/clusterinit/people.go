package clusterinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// People: every administrator, custodian and auditor gets a NATS user of
// their own (natsauth.PersonPermissions of their roles), its credential
// written 0600 under DIR/operators/<name>.creds for that person only, and
// an entry in DIR/trust/roster.json, which `sovkeys init` (the bootstrap
// identity, the only one allowed) writes into the roster bucket. Removing
// a person deletes their credential file and revokes their key in the
// account JWT. The shared operator.creds of earlier versions is revoked
// and deleted the same way.

// RosterFile is the roster cluster init writes beside the bootstrap
// credential (DIR/trust/roster.json): `sovkeys init` loads it.
const RosterFile = "roster.json"

// LegacyOperatorCreds is the shared operator credential of earlier
// versions (DIR/operator.creds): revoked and removed by Init.
const LegacyOperatorCreds = "operator.creds"

// PersonSpec names a person and their roles (`--operator NAME:ROLE[+ROLE]`).
type PersonSpec struct {
	Name  string
	Roles []natsauth.Role
}

// ParsePersonSpec reads NAME:ROLE[+ROLE].
func ParsePersonSpec(s string) (PersonSpec, error) {
	name, roles, ok := strings.Cut(s, ":")
	if !ok || !shared.ValidPersonName(name) || name == natsauth.BootstrapPerson {
		return PersonSpec{}, fmt.Errorf("%w: --operator %q: want NAME:ROLE[+ROLE], NAME 1-32 characters of [a-z0-9-] starting with a letter", shared.ErrConfigValidation, s)
	}
	rs, err := natsauth.ParseRoles(roles)
	if err != nil {
		return PersonSpec{}, err
	}
	return PersonSpec{Name: name, Roles: rs}, nil
}

// RosterEntry is one person of roster.json (the roster bucket's format,
// shared/infra/roster.Person).
type RosterEntry struct {
	Name      string          `json:"name"`
	PublicKey string          `json:"public_key"`
	Roles     []natsauth.Role `json:"roles"`
	Added     time.Time       `json:"added"`
	AddedBy   string          `json:"added_by,omitempty"`
}

// PersonCredsFile is where person name's credential is written under dir.
func PersonCredsFile(dir, name string) string {
	return filepath.Join(dir, "operators", name+".creds")
}

// EnsurePerson issues (or keeps, when its permissions are current) the
// credential of person p under dir and returns its roster entry.
func EnsurePerson(trust *natsauth.Trust, dir string, p PersonSpec, now time.Time) (RosterEntry, bool, error) {
	if err := os.MkdirAll(filepath.Join(dir, "operators"), 0o700); err != nil {
		return RosterEntry{}, false, fmt.Errorf("%w: %v", ErrInit, err)
	}
	accPub, _ := trust.AppAccountKey()
	path := PersonCredsFile(dir, p.Name)
	if b, err := os.ReadFile(path); err == nil {
		if uc, err := decodeCreds(b); err == nil && trust.Revoked(uc.Subject) {
			_ = os.Remove(path) // a revoked key is never handed out again
		}
	}
	wrote, err := ensureCreds(trust, accPub, path, natsauth.PersonUser(p.Name), natsauth.PersonPermissions(p.Name, p.Roles))
	if err != nil {
		return RosterEntry{}, false, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return RosterEntry{}, false, fmt.Errorf("%w: %v", ErrInit, err)
	}
	uc, err := decodeCreds(b)
	if err != nil {
		return RosterEntry{}, false, fmt.Errorf("%w: %s: %v", ErrInit, path, err)
	}
	return RosterEntry{Name: p.Name, PublicKey: uc.Subject, Roles: p.Roles, Added: now.UTC(), AddedBy: natsauth.BootstrapPerson}, wrote, nil
}

// RevokePerson revokes person name's credential (if any) and deletes it.
func RevokePerson(trust *natsauth.Trust, dir, name string, now time.Time) error {
	return revokeCredsFile(trust, PersonCredsFile(dir, name), now)
}

// revokeCredsFile revokes the user of creds file path and removes the file.
func revokeCredsFile(trust *natsauth.Trust, path string, now time.Time) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInit, err)
	}
	if uc, err := decodeCreds(b); err == nil {
		if err := trust.Revoke(uc.Subject, now); err != nil {
			return fmt.Errorf("%w: %w", ErrInit, err)
		}
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("%w: %v", ErrInit, err)
	}
	return nil
}

// RevokeLegacyOperator revokes and removes dir/operator.creds, the shared
// credential of earlier versions; it reports whether there was one.
func RevokeLegacyOperator(trust *natsauth.Trust, dir string, now time.Time) (bool, error) {
	path := filepath.Join(dir, LegacyOperatorCreds)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return true, revokeCredsFile(trust, path, now)
}

// WriteRoster writes entries (sorted by name) to path, keeping each
// person's earlier Added time.
func WriteRoster(path string, entries []RosterEntry) error {
	old, _ := ReadRoster(path)
	for i := range entries {
		for _, o := range old {
			if o.Name == entries[i].Name && o.PublicKey == entries[i].PublicKey {
				entries[i].Added = o.Added
			}
		}
	}
	if entries == nil {
		entries = []RosterEntry{}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	b, err := json.MarshalIndent(entries, "", "  ")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInit, err)
	}
	if old, err := os.ReadFile(path); err == nil && string(old) == string(append(b, '\n')) {
		return nil
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("%w: %v", ErrInit, err)
	}
	return nil
}

// ReadRoster reads a roster.json (no file: no one).
func ReadRoster(path string) ([]RosterEntry, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	var out []RosterEntry
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInit, path, err)
	}
	return out, nil
}

// people applies the person changes of cfg to st and writes their files.
func people(trust *natsauth.Trust, dir string, st *state, cfg Config, res *Result) error {
	now := time.Now()
	if st.Operators == nil {
		st.Operators = map[string][]natsauth.Role{}
	}
	for _, name := range cfg.RemoveOperators {
		if _, ok := st.Operators[name]; !ok {
			return fmt.Errorf("%w: no operator %q to remove", ErrInit, name)
		}
		delete(st.Operators, name)
		if err := RevokePerson(trust, dir, name, now); err != nil {
			return err
		}
	}
	for _, p := range cfg.Operators {
		if !shared.ValidPersonName(p.Name) || p.Name == natsauth.BootstrapPerson || len(p.Roles) == 0 {
			return fmt.Errorf("%w: person %q: a name of 1-32 characters of [a-z0-9-] starting with a letter, and a role", ErrInit, p.Name)
		}
		for _, r := range p.Roles {
			if !slices.Contains(natsauth.Roles(), r) {
				return fmt.Errorf("%w: person %q: unknown role %q", ErrInit, p.Name, r)
			}
		}
		if slices.Contains(cfg.RemoveOperators, p.Name) {
			return fmt.Errorf("%w: operator %q both added and removed", ErrInit, p.Name)
		}
		st.Operators[p.Name] = p.Roles
	}
	if _, err := RevokeLegacyOperator(trust, dir, now); err != nil {
		return err
	}
	var entries []RosterEntry
	for name, roles := range st.Operators {
		e, wrote, err := EnsurePerson(trust, dir, PersonSpec{Name: name, Roles: roles}, now)
		if err != nil {
			return err
		}
		if wrote {
			res.Written = append(res.Written, PersonCredsFile(dir, name))
		}
		res.People = append(res.People, e)
		entries = append(entries, e)
	}
	sort.Slice(res.People, func(i, j int) bool { return res.People[i].Name < res.People[j].Name })
	return WriteRoster(filepath.Join(dir, "trust", RosterFile), entries)
}
