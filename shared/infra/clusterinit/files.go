package clusterinit

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"

	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// ensureCreds keeps the creds file at path when it is a user of account
// accPub named name with exactly perms and its JWT is not due for renewal
// (natsauth.Trust.NeedsRenewal: no expiry, as every credential of earlier
// releases, or a third of its validity left); otherwise it issues a new one
// and revokes the key it replaces, so a credential with yesterday's
// permissions stops working once the servers load the account JWT.
func ensureCreds(trust *natsauth.Trust, accPub, path, name string, perms natsauth.Permissions) (wrote bool, err error) {
	return EnsureCreds(trust, accPub, path, name, perms, time.Now())
}

// EnsureCreds is ensureCreds at time now (standalone's services use it too).
func EnsureCreds(trust *natsauth.Trust, accPub, path, name string, perms natsauth.Permissions, now time.Time) (wrote bool, err error) {
	var old string
	if b, err := os.ReadFile(path); err == nil {
		if uc, err := decodeCreds(b); err == nil && uc.Issuer == accPub {
			if uc.Name == name && samePerms(uc, perms) && !trust.NeedsRenewal(uc.Expires, now) && !trust.Revoked(uc.Subject) {
				return false, nil
			}
			old = uc.Subject
		}
	}
	if err := trust.WriteUserCreds(path, name, perms); err != nil {
		return false, fmt.Errorf("%w: %w", ErrInit, err)
	}
	if old != "" {
		if err := trust.Revoke(old, now); err != nil {
			return true, fmt.Errorf("%w: %w", ErrInit, err)
		}
	}
	return true, nil
}

func decodeCreds(b []byte) (*jwt.UserClaims, error) {
	tok, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return nil, err
	}
	return jwt.DecodeUserClaims(tok)
}

// samePerms compares a user's JWT permissions with perms, as sets.
func samePerms(uc *jwt.UserClaims, p natsauth.Permissions) bool {
	eq := func(have jwt.StringList, want []string) bool {
		a, b := slices.Clone([]string(have)), slices.Clone(want)
		slices.Sort(a)
		slices.Sort(b)
		return slices.Equal(slices.Compact(a), slices.Compact(b))
	}
	up := uc.Permissions
	return eq(up.Pub.Allow, p.Pub) && eq(up.Sub.Allow, p.Sub) && eq(up.Pub.Deny, p.DenyPub) &&
		eq(up.Sub.Deny, p.DenySub) && (up.Resp != nil) == p.Respond
}

// accountJWT returns the account JWT preloaded by every node: the one kept
// in trust/<file> by an earlier run while it still names pub and is signed
// by the operator, so re-running leaves node configs unchanged.
func accountJWT(dir, file, pub, fresh, opPub string, res *Result) (string, error) {
	path := filepath.Join(dir, "trust", file)
	if b, err := os.ReadFile(path); err == nil {
		tok := strings.TrimSpace(string(b))
		if ac, err := jwt.DecodeAccountClaims(tok); err == nil && ac.Subject == pub && ac.Issuer == opPub && sameRevocations(ac, fresh) {
			return tok, nil
		}
	}
	if err := writeIfChanged(path, []byte(fresh+"\n"), 0o644, res); err != nil {
		return "", err
	}
	return fresh, nil
}

// nodeConfig is the nats-server configuration of nodes[i].
func nodeConfig(st state, nodes []Node, i int, tlsFiles TLSFiles, opJWTFile, sysPub, sysJWT, accPub, accJWT string) string {
	n := nodes[i]
	var b strings.Builder
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	fmt.Fprintf(&b, "# nats-server configuration of node %s, written by `sovkeys cluster init`.\n", n.Name)
	fmt.Fprintf(&b, "server_name: %s\n", q(st.ClusterName+"-"+n.Name))
	fmt.Fprintf(&b, "listen: %s\n", q(fmt.Sprintf("%s:%d", n.Host, n.ClientPort)))
	b.WriteString("# Monitoring (/varz, /connz: unauthenticated) on loopback unless cluster init --monitor-host says otherwise.\n")
	fmt.Fprintf(&b, "http: %s\n", q(net.JoinHostPort(n.MonitorHost, strconv.Itoa(n.MonitorPort))))
	b.WriteString("# User JWTs carry per-service permission lists longer than the 4 KiB default.\n")
	b.WriteString("max_control_line: 64KB\nmax_payload: 1MB\n")
	fmt.Fprintf(&b, "jetstream {\n  store_dir: %s\n}\n", q(n.StoreDir))
	// Clients: TLS required, the node verified by them with the CA; their
	// NATS credential authenticates them. Routes (the cluster block):
	// nats-server always requires and verifies the peer's certificate
	// against ca_file there, so only a node of this CA joins.
	tlsBlock := func(indent string) {
		if tlsFiles.CertFile == "" {
			return
		}
		fmt.Fprintf(&b, "%stls {\n%s  cert_file: %s\n%s  key_file: %s\n", indent, indent, q(tlsFiles.CertFile), indent, q(tlsFiles.KeyFile))
		if tlsFiles.CAFile != "" {
			fmt.Fprintf(&b, "%s  ca_file: %s\n", indent, q(tlsFiles.CAFile))
		}
		fmt.Fprintf(&b, "%s  timeout: 2\n%s}\n", indent, indent)
	}
	tlsBlock("")
	if len(nodes) > 1 {
		fmt.Fprintf(&b, "cluster {\n  name: %s\n  listen: %s\n  routes: [\n", q(st.ClusterName), q(fmt.Sprintf("%s:%d", n.Host, n.ClusterPort)))
		scheme := "nats-route"
		for j, o := range nodes {
			if j != i {
				fmt.Fprintf(&b, "    %s\n", q(fmt.Sprintf("%s://%s:%d", scheme, o.Host, o.ClusterPort)))
			}
		}
		b.WriteString("  ]\n")
		tlsBlock("  ")
		b.WriteString("}\n")
	}
	fmt.Fprintf(&b, "operator: %s\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: {\n", q(opJWTFile), sysPub)
	fmt.Fprintf(&b, "  %s: %s\n  %s: %s\n}\n", sysPub, q(sysJWT), accPub, q(accJWT))
	return b.String()
}

// sameOperator reports whether tok is a self-signed operator JWT of opPub
// naming sysPub as its system account.
func sameOperator(tok, opPub, sysPub string) bool {
	oc, err := jwt.DecodeOperatorClaims(strings.TrimSpace(tok))
	return err == nil && oc.Subject == opPub && oc.Issuer == opPub && oc.SystemAccount == sysPub
}

// sameRevocations reports whether account claims ac revoke the same users
// as the account JWT fresh (a person removed since: write fresh).
func sameRevocations(ac *jwt.AccountClaims, fresh string) bool {
	fc, err := jwt.DecodeAccountClaims(fresh)
	if err != nil {
		return true
	}
	if len(ac.Revocations) != len(fc.Revocations) {
		return false
	}
	for k := range fc.Revocations {
		if _, ok := ac.Revocations[k]; !ok {
			return false
		}
	}
	return true
}
