// Package clusterinit writes everything a NATS cluster of a sovkeys
// deployment needs, from nothing: the operator and account trust (seeds kept
// in trust/), one user credential per service with its permissions from
// shared/infra/natsauth, the operator CLI's credential, and one
// nats-server configuration per node (routes, JetStream, a memory resolver
// with the accounts preloaded, TLS always: the given certificates or a
// cluster CA of its own, tls.go; monitoring on loopback).
//
// Running it again with more pools or users adds them: the operator and
// account seeds are kept, and a credential file is rewritten only when its
// permissions change or its JWT is due for renewal (user JWTs expire,
// natsauth.DefaultValidity); a re-issued credential's old key is revoked in
// the account JWT the nodes preload, which Reload makes them load live.
package clusterinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// ErrInit is wrapped by every error of this package.
var ErrInit = errors.New("clusterinit: failed")

// Config says what to write.
type Config struct {
	Dir         string   // output directory (created; seeds in Dir/trust)
	Nodes       int      // nats-server nodes, 1..9 (3 in production)
	Pools       []string // keyworker pools; merged with the pools of an earlier run
	Users       []string // service users, named as in natsauth.ServicePermissions; merged likewise
	ClusterName string   // JetStream cluster name (default "sovkeys")
	// Hosts are the nodes' addresses (one per node). Empty: every node on
	// 127.0.0.1 with distinct ports PortBase+i (client), PortBase+100+i
	// (routes), PortBase+200+i (monitoring).
	Hosts    []string
	PortBase int // default 14222
	// TLS: when CertFile and KeyFile are set, clients and routes use TLS
	// with them (the certificate needs serverAuth and clientAuth: routes
	// are mutual); otherwise Init makes a cluster CA and node certificates
	// (tls.go). Either way the cluster is never open.
	TLS TLSFiles
	// MonitorHost is the address the nodes' monitoring port listens on
	// (default 127.0.0.1: /varz and /connz are unauthenticated).
	MonitorHost string
	// Validity is the lifetime of the user JWTs issued (0: the earlier
	// run's, else natsauth.DefaultValidity).
	Validity time.Duration
	// Rotate names users (a service, bootstrap, or a person) whose
	// credential is re-issued now, the old key revoked.
	Rotate []string
	// Revoke names service users (or bootstrap) whose credential is revoked
	// and not re-issued until Rotate names them, or user public keys
	// (U..., such as a copied credential's) to revoke.
	Revoke []string
	// Operators are people to add (or whose roles change); RemoveOperators
	// people to remove (their credential is revoked). people.go.
	Operators       []PersonSpec
	RemoveOperators []string
}

// TLSFiles are PEM files of a node's NATS TLS.
type TLSFiles struct{ CertFile, KeyFile, CAFile string }

// Node is one nats-server of the cluster.
type Node struct {
	Name                    string
	Host                    string
	MonitorHost             string // where MonitorPort listens (127.0.0.1 unless told otherwise)
	ClientPort, ClusterPort int
	MonitorPort             int
	ConfigFile, StoreDir    string
}

// ClientURL is the URL services dial for this node.
func (n Node) ClientURL() string { return fmt.Sprintf("nats://%s:%d", n.Host, n.ClientPort) }

// MonitorURL is the node's HTTP monitoring endpoint (/healthz, /jsz).
func (n Node) MonitorURL() string {
	h := n.MonitorHost
	if h == "" || h == "0.0.0.0" || h == "::" {
		h = n.Host
	}
	return fmt.Sprintf("http://%s:%d", h, n.MonitorPort)
}

// Result is what Init wrote or kept.
type Result struct {
	Dir      string
	Nodes    []Node
	Pools    []string
	Creds    map[string]string // user name -> creds file
	Written  []string          // files (re)written in this run
	URLs     string            // every node's client URL, comma separated
	EnvFile  string            // SOVKEYS_NATS_URL (and _CA) for services and the CLI
	TLSNodes bool
	CAFile   string        // the CA clients verify the nodes with
	People   []RosterEntry // every person, with their credential under Dir/operators
	// NodesChanged reports that a node configuration was rewritten (new
	// revocations, certificates, pools): running nodes must reload it.
	NodesChanged bool
	// Suspended are the users revoked with Revoke and not re-issued.
	Suspended []string
}

// state is what an earlier run chose, kept in Dir/cluster.json.
type state struct {
	ClusterName string   `json:"cluster_name"`
	Nodes       int      `json:"nodes"`
	Pools       []string `json:"pools"`
	Users       []string `json:"users"`
	Hosts       []string `json:"hosts,omitempty"`
	PortBase    int      `json:"port_base"`
	TLS         TLSFiles `json:"tls"`
	// Operators are the people of the deployment and their roles.
	Operators map[string][]natsauth.Role `json:"operators,omitempty"`
	// Validity is the user JWTs' lifetime (a Go duration; empty: default).
	Validity    string   `json:"validity,omitempty"`
	MonitorHost string   `json:"monitor_host,omitempty"`
	Suspended   []string `json:"suspended,omitempty"`
}

// StateFile is the name of the file under Dir recording the choices made.
const StateFile = "cluster.json"

// Init writes (or completes) the deployment's NATS material under cfg.Dir.
func Init(cfg Config) (*Result, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("%w: output directory is required", ErrInit)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	st, err := merge(dir, cfg)
	if err != nil {
		return nil, err
	}
	for _, sub := range []string{"", "trust", "creds", "nats"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInit, err)
		}
	}
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInit, err)
	}
	validity, _ := time.ParseDuration(st.Validity) // checked by merge
	if err := trust.SetValidity(validity); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInit, err)
	}
	res := &Result{Dir: dir, Pools: st.Pools, Creds: map[string]string{}, TLSNodes: true}
	if err := rotateAndRevoke(trust, dir, &st, cfg, time.Now()); err != nil {
		return nil, err
	}
	if err := people(trust, dir, &st, cfg, res); err != nil {
		return nil, err
	}
	if err := revokeLegacyKeyworker(trust, dir, res); err != nil { // keyworkers.go
		return nil, err
	}
	users := append([]string{shared.UserBootstrap}, st.Users...)
	accPub, _ := trust.AppAccountKey()
	for _, u := range users {
		if slices.Contains(st.Suspended, u) {
			continue // revoked with --revoke until --rotate
		}
		if u == natsauth.ServiceKeyworker { // keyworkers.go: one user per pool
			if err := ensureKeyworkers(trust, accPub, dir, st.Pools, res); err != nil {
				return nil, err
			}
			continue
		}
		perms, p := userCreds(dir, u, st.Pools)
		wrote, err := ensureCreds(trust, accPub, p, u, perms)
		if err != nil {
			return nil, err
		}
		if wrote {
			res.Written = append(res.Written, p)
		}
		res.Creds[u] = p
		if u == natsauth.ServiceAuthn {
			if _, err := EnsureWorkKeys(dir, res); err != nil { // workkeys.go
				return nil, err
			}
		}
	}
	res.Suspended = slices.Clone(st.Suspended)
	// The account JWT after every renewal and rotation: it revokes the keys
	// they replaced.
	_, accFresh := trust.AppAccountKey()
	opClaims, err := jwt.DecodeOperatorClaims(trust.OperatorJWT())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	sysPub, sysFresh := trust.SystemAccountKey()
	opJWT := filepath.Join(dir, "trust", "operator.jwt")
	if b, err := os.ReadFile(opJWT); err != nil || !sameOperator(string(b), opClaims.Subject, sysPub) {
		if err := writeIfChanged(opJWT, []byte(trust.OperatorJWT()+"\n"), 0o644, res); err != nil {
			return nil, err
		}
	}
	sysJWT, err := accountJWT(dir, "system.jwt", sysPub, sysFresh, opClaims.Subject, res)
	if err != nil {
		return nil, err
	}
	accJWT, err := accountJWT(dir, "account.jwt", accPub, accFresh, opClaims.Subject, res)
	if err != nil {
		return nil, err
	}
	res.Nodes = st.nodes(dir)
	nodeTLS := make([]TLSFiles, len(res.Nodes))
	if st.TLS.CertFile != "" {
		for i := range nodeTLS {
			nodeTLS[i] = st.TLS
		}
		res.CAFile = st.TLS.CAFile
	} else if res.CAFile, nodeTLS, err = clusterTLS(dir, res.Nodes, time.Now(), res); err != nil {
		return nil, err
	}
	var urls []string
	for _, n := range res.Nodes {
		urls = append(urls, n.ClientURL())
	}
	res.URLs = strings.Join(urls, ",")
	for i, n := range res.Nodes {
		if err := os.MkdirAll(n.StoreDir, 0o700); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInit, err)
		}
		before := len(res.Written)
		if err := writeIfChanged(n.ConfigFile, []byte(nodeConfig(st, res.Nodes, i, nodeTLS[i], opJWT, sysPub, sysJWT, accPub, accJWT)), 0o600, res); err != nil {
			return nil, err
		}
		res.NodesChanged = res.NodesChanged || len(res.Written) > before
	}
	env := "SOVKEYS_NATS_URL=" + res.URLs + "\n"
	if res.CAFile != "" {
		env += "SOVKEYS_NATS_CA=" + res.CAFile + "\n"
	}
	res.EnvFile = filepath.Join(dir, "cluster.env")
	if err := writeIfChanged(res.EnvFile, []byte(env), 0o644, res); err != nil {
		return nil, err
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := writeIfChanged(filepath.Join(dir, StateFile), append(b, '\n'), 0o600, res); err != nil {
		return nil, err
	}
	return res, nil
}

// merge combines cfg with the choices of an earlier run: pools and users
// are added to, never dropped; unset settings keep their earlier values.
func merge(dir string, cfg Config) (state, error) {
	var st state
	if b, err := os.ReadFile(filepath.Join(dir, StateFile)); err == nil {
		if err := json.Unmarshal(b, &st); err != nil {
			return st, fmt.Errorf("%w: %s: %v", ErrInit, StateFile, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("%w: %v", ErrInit, err)
	}
	if cfg.Nodes != 0 {
		st.Nodes = cfg.Nodes
	}
	if st.Nodes == 0 {
		st.Nodes = 3
	}
	if cfg.ClusterName != "" {
		st.ClusterName = cfg.ClusterName
	}
	if st.ClusterName == "" {
		st.ClusterName = "sovkeys"
	}
	if cfg.PortBase != 0 {
		st.PortBase = cfg.PortBase
	}
	if st.PortBase == 0 {
		st.PortBase = 14222
	}
	if len(cfg.Hosts) > 0 {
		st.Hosts = cfg.Hosts
	}
	if cfg.TLS.CertFile != "" || cfg.TLS.KeyFile != "" || cfg.TLS.CAFile != "" {
		st.TLS = cfg.TLS
	}
	st.Pools = union(st.Pools, cfg.Pools)
	if len(st.Pools) == 0 {
		st.Pools = []string{"default"}
	}
	st.Users = union(st.Users, cfg.Users)
	if cfg.Validity != 0 {
		st.Validity = cfg.Validity.String()
	}
	if cfg.MonitorHost != "" {
		st.MonitorHost = cfg.MonitorHost
	}
	if st.MonitorHost == "" {
		st.MonitorHost = "127.0.0.1"
	}
	validity, verr := time.ParseDuration(st.Validity)
	if st.Validity == "" {
		validity, verr = natsauth.DefaultValidity, nil
	}
	switch {
	case verr != nil || validity < natsauth.MinValidity:
		return st, fmt.Errorf("%w: validity %q: at least %s", ErrInit, st.Validity, natsauth.MinValidity)
	case st.Nodes < 1 || st.Nodes > 9:
		return st, fmt.Errorf("%w: nodes must be 1..9, got %d", ErrInit, st.Nodes)
	case len(st.Hosts) > 0 && len(st.Hosts) != st.Nodes:
		return st, fmt.Errorf("%w: %d hosts for %d nodes", ErrInit, len(st.Hosts), st.Nodes)
	case st.PortBase < 1024 || st.PortBase+300 > 65535:
		return st, fmt.Errorf("%w: port base %d out of range", ErrInit, st.PortBase)
	case (st.TLS.CertFile == "") != (st.TLS.KeyFile == ""):
		return st, fmt.Errorf("%w: TLS needs both a certificate and its key", ErrInit)
	case !validName(st.ClusterName):
		return st, fmt.Errorf("%w: cluster name %q", ErrInit, st.ClusterName)
	}
	for _, p := range st.Pools {
		if !shared.ValidPoolName(p) {
			return st, fmt.Errorf("%w: pool name %q", ErrInit, p)
		}
	}
	for _, u := range st.Users {
		if !validName(u) || !slices.Contains(serviceUsers(), u) {
			return st, fmt.Errorf("%w: %q is not a user of the permission table", ErrInit, u)
		}
	}
	return st, nil
}

// serviceUsers are the users of the permission table cluster init mints on
// request (the bootstrap user and the people are always written).
func serviceUsers() []string {
	return []string{natsauth.ServiceGateway, natsauth.ServiceAuthn, natsauth.ServiceKeyworker, natsauth.ServiceAudit}
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// nodes lays out the cluster's servers.
func (st state) nodes(dir string) []Node {
	var out []Node
	for i := range st.Nodes {
		n := Node{Name: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", MonitorHost: st.MonitorHost,
			ClientPort: st.PortBase + i, ClusterPort: st.PortBase + 100 + i, MonitorPort: st.PortBase + 200 + i}
		if len(st.Hosts) > 0 {
			n.Host = st.Hosts[i]
			n.ClientPort, n.ClusterPort, n.MonitorPort = st.PortBase, st.PortBase+100, st.PortBase+200
		}
		n.ConfigFile = filepath.Join(dir, "nats", n.Name+".conf")
		n.StoreDir = filepath.Join(dir, "nats", n.Name)
		out = append(out, n)
	}
	return out
}

// writeIfChanged writes data to path unless it already holds exactly data.
func writeIfChanged(path string, data []byte, mode os.FileMode, res *Result) error {
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return nil
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("%w: %v", ErrInit, err)
	}
	res.Written = append(res.Written, path)
	return nil
}
