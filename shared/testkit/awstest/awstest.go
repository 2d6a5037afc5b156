// Package awstest runs, on loopback, a server that speaks the real AWS
// query protocol and XML of the three calls sovkeys makes for AWS instance
// identity: STS GetCallerIdentity and AssumeRole, and EC2
// DescribeInstances. It verifies the SigV4 signature of every request it
// receives against a table of known credentials (with an independent
// verifier), so tests prove that what sovkeys and its client send is signed
// correctly, and it rejects bad signatures, unknown keys, wrong session
// tokens, stale dates and expired credentials with the error codes AWS uses.
//
// Accounts, roles, instances and credentials are set up in Go. One server
// plays both STS and EC2 (pick by Action; the credential scope's service
// must match).
package awstest

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// DefaultRegion is the region a server answers for unless told otherwise.
const DefaultRegion = "us-east-1"

// Credential is an AWS access key, with a session token for temporary ones.
type Credential struct {
	AccessKeyID, SecretAccessKey, SessionToken string
	Expires                                    time.Time // zero: never
}

// Role is an IAM role that principals may assume with sts:AssumeRole.
type Role struct {
	ARN string // arn:aws:iam::ACCOUNT:role/[path/]NAME
	// Trusted lists the principal ARNs its trust policy allows to assume it.
	Trusted []string
	// ExternalID, when set, must be given by AssumeRole callers.
	ExternalID string
	// DescribeInstances grants ec2:DescribeInstances in the role's account.
	DescribeInstances bool
}

// Instance is an EC2 instance, visible to roles of its account.
type Instance struct {
	ID, Account string
	State       string // pending | running | stopping | stopped | shutting-down | terminated
	VPCID       string
	PrivateIP   string
	// ProfileARN is its IAM instance profile (empty: none).
	ProfileARN string
	// Interfaces are its network interfaces beyond the primary address.
	Interfaces []NetworkInterface
}

// NetworkInterface is an attached ENI.
type NetworkInterface struct {
	VPCID      string
	PrivateIPs []string
	IPv6       []string
}

// Request is one request the server received.
type Request struct {
	Action, Method, Host, Path, ContentType string
	Body                                    string
	AccessKeyID                             string // of the verified signer; empty when refused
	Header                                  http.Header
	Error                                   string // AWS error code answered, if any
}

type principal struct {
	cred      Credential
	arn       string // caller ARN as GetCallerIdentity reports it
	userID    string
	account   string
	expires   time.Time
	describes bool // may call ec2:DescribeInstances in its account
}

// Server is a running loopback STS + EC2.
type Server struct {
	URL    string // http://127.0.0.1:port, for both STS and EC2
	Region string

	srv *httptest.Server

	mu        sync.Mutex
	now       func() time.Time
	keys      map[string]*principal
	roles     map[string]Role
	instances map[string]Instance
	requests  []Request
	stalled   map[string]bool
	closed    chan struct{}
	closeOnce sync.Once
}

// New starts a server for DefaultRegion on a loopback port. Close it.
func New() *Server {
	s := &Server{
		Region: DefaultRegion, now: time.Now,
		keys: map[string]*principal{}, roles: map[string]Role{}, instances: map[string]Instance{},
		stalled: map[string]bool{}, closed: make(chan struct{}),
	}
	s.srv = httptest.NewServer(s)
	s.URL = s.srv.URL
	return s
}

// Start is New for a test: the server closes at the end of t.
func Start(t testing.TB) *Server {
	s := New()
	t.Cleanup(s.Close)
	return s
}

// Close stops the server and releases stalled requests.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closed) })
	s.srv.CloseClientConnections()
	s.srv.Close()
}

// SetClock replaces the server clock (default time.Now).
func (s *Server) SetClock(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}

func (s *Server) clock() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now()
}

// AddUser creates an IAM user with an access key (e.g. the credentials of
// sovkeys itself) and returns the key.
func (s *Server) AddUser(account, name string) Credential {
	c := Credential{AccessKeyID: "AKIA" + randKey(16), SecretAccessKey: randSecret(30)}
	s.addPrincipal(&principal{cred: c, arn: "arn:aws:iam::" + account + ":user/" + name, userID: "AIDA" + randKey(17), account: account})
	return c
}

// InstanceCredentials returns instance-profile credentials of instance
// running with role roleName in account, as IMDS hands them out: the
// caller ARN is arn:aws:sts::ACCOUNT:assumed-role/ROLE/INSTANCE.
func (s *Server) InstanceCredentials(account, roleName, instanceID string) Credential {
	c := Credential{
		AccessKeyID: "ASIA" + randKey(16), SecretAccessKey: randSecret(30), SessionToken: randToken(),
		Expires: s.clock().Add(6 * time.Hour),
	}
	s.addPrincipal(&principal{
		cred: c, arn: "arn:aws:sts::" + account + ":assumed-role/" + roleName + "/" + instanceID,
		userID: "AROA" + randKey(17) + ":" + instanceID, account: account, expires: c.Expires,
	})
	return c
}

// ExpireCredentials makes a credential expired from now on.
func (s *Server) ExpireCredentials(accessKeyID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.keys[accessKeyID]; p != nil {
		p.expires = s.now().Add(-time.Second)
	}
}

func (s *Server) addPrincipal(p *principal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[p.cred.AccessKeyID] = p
}

// AddRole defines (or replaces) a role.
func (s *Server) AddRole(r Role) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roles[r.ARN] = r
}

// AddInstance defines (or replaces) an instance.
func (s *Server) AddInstance(in Instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.instances[in.ID] = in
}

// SetInstanceState changes an instance's state.
func (s *Server) SetInstanceState(id, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.instances[id]
	in.State = state
	s.instances[id] = in
}

// Stall makes requests for action ("GetCallerIdentity", "AssumeRole",
// "DescribeInstances") never answer while on: they hang until the client
// gives up or the server closes.
func (s *Server) Stall(action string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stalled[action] = on
}

// Requests returns a copy of every request received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Count returns how many requests for action were answered without error.
func (s *Server) Count(action string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Action == action && r.Error == "" {
			n++
		}
	}
	return n
}

// apiError is an AWS error answer.
type apiError struct {
	status        int
	code, message string
}

var services = map[string]string{"GetCallerIdentity": "sts", "AssumeRole": "sts", "DescribeInstances": "ec2"}

// ServeHTTP implements the AWS query protocol: Action and parameters in the
// form body of a POST (or the query string of a GET).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return
	}
	params, qerr := url.ParseQuery(r.URL.RawQuery)
	if r.Method == http.MethodPost && qerr == nil {
		var form url.Values
		if form, qerr = url.ParseQuery(string(body)); qerr == nil {
			for k, v := range form {
				params[k] = append(params[k], v...)
			}
		}
	}
	action := params.Get("Action")
	rec := Request{Action: action, Method: r.Method, Host: r.Host, Path: r.URL.Path,
		ContentType: r.Header.Get("Content-Type"), Body: string(body), Header: r.Header.Clone()}
	s.mu.Lock()
	stall := s.stalled[action]
	s.mu.Unlock()
	if stall {
		select {
		case <-r.Context().Done():
		case <-s.closed:
		}
		return
	}
	service, ok := services[action]
	var p *principal
	var aerr *apiError
	switch {
	case qerr != nil:
		aerr = &apiError{http.StatusBadRequest, "MalformedQueryString", "The request body is not a valid form"}
	case !ok:
		aerr = &apiError{http.StatusBadRequest, "InvalidAction", "Could not find operation " + action}
	default:
		p, aerr = s.authenticate(r, body, service)
	}
	if aerr == nil {
		rec.AccessKeyID = p.cred.AccessKeyID
		switch action {
		case "GetCallerIdentity":
			aerr = s.writeXML(w, getCallerIdentityResponse(p))
		case "AssumeRole":
			aerr = s.assumeRole(w, p, params)
		case "DescribeInstances":
			aerr = s.describeInstances(w, p, params)
		}
	}
	if aerr != nil {
		rec.Error = aerr.code
		writeError(w, service, aerr)
	}
	s.mu.Lock()
	s.requests = append(s.requests, rec)
	s.mu.Unlock()
}

var sessionNameRE = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)

func (s *Server) assumeRole(w http.ResponseWriter, p *principal, params url.Values) *apiError {
	roleARN, session := params.Get("RoleArn"), params.Get("RoleSessionName")
	if !sessionNameRE.MatchString(session) {
		return &apiError{http.StatusBadRequest, "ValidationError", "RoleSessionName must match [\\w+=,.@-]{2,64}"}
	}
	duration := 3600 * time.Second
	if d := params.Get("DurationSeconds"); d != "" {
		var n int
		if _, err := fmt.Sscan(d, &n); err != nil || n < 900 || n > 43200 {
			return &apiError{http.StatusBadRequest, "ValidationError", "DurationSeconds must be in [900, 43200]"}
		}
		duration = time.Duration(n) * time.Second
	}
	s.mu.Lock()
	role, ok := s.roles[roleARN]
	s.mu.Unlock()
	denied := &apiError{http.StatusForbidden, "AccessDenied",
		"User: " + p.arn + " is not authorized to perform: sts:AssumeRole on resource: " + roleARN}
	if !ok || !contains(role.Trusted, p.arn) || role.ExternalID != "" && params.Get("ExternalId") != role.ExternalID {
		return denied
	}
	account, name, ok := roleParts(roleARN)
	if !ok {
		return denied
	}
	c := Credential{
		AccessKeyID: "ASIA" + randKey(16), SecretAccessKey: randSecret(30), SessionToken: randToken(),
		Expires: s.clock().Add(duration).Truncate(time.Second),
	}
	roleID := "AROA" + randKey(17)
	np := &principal{cred: c, arn: "arn:aws:sts::" + account + ":assumed-role/" + name + "/" + session,
		userID: roleID + ":" + session, account: account, expires: c.Expires, describes: role.DescribeInstances}
	s.addPrincipal(np)
	return s.writeXML(w, assumeRoleResponse(np, roleID))
}

var instanceIDRE = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)

func (s *Server) describeInstances(w http.ResponseWriter, p *principal, params url.Values) *apiError {
	if !p.describes {
		return &apiError{http.StatusForbidden, "UnauthorizedOperation", "You are not authorized to perform this operation. User: " + p.arn +
			" is not authorized to perform: ec2:DescribeInstances"}
	}
	var ids []string
	for k, v := range params {
		switch {
		case strings.HasPrefix(k, "InstanceId."):
			ids = append(ids, v...)
		case strings.HasPrefix(k, "Filter."):
			return &apiError{http.StatusBadRequest, "InvalidParameterValue", "awstest: filters are not supported"}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Instance
	if len(ids) == 0 {
		for _, in := range s.instances {
			if in.Account == p.account {
				out = append(out, in)
			}
		}
	}
	for _, id := range ids {
		if !instanceIDRE.MatchString(id) {
			return &apiError{http.StatusBadRequest, "InvalidInstanceID.Malformed", "Invalid id: \"" + id + "\""}
		}
		in, ok := s.instances[id]
		if !ok || in.Account != p.account {
			return &apiError{http.StatusBadRequest, "InvalidInstanceID.NotFound", "The instance ID '" + id + "' does not exist"}
		}
		out = append(out, in)
	}
	return s.writeXMLLocked(w, describeInstancesResponse(out))
}

func (s *Server) writeXML(w http.ResponseWriter, v any) *apiError {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeXMLLocked(w, v)
}

func (s *Server) writeXMLLocked(w http.ResponseWriter, v any) *apiError {
	b, err := marshalXML(v)
	if err != nil {
		return &apiError{http.StatusInternalServerError, "InternalFailure", err.Error()}
	}
	w.Header().Set("Content-Type", "text/xml")
	_, _ = w.Write(b)
	return nil
}

// roleParts splits arn:aws:iam::ACCOUNT:role/[path/]NAME.
func roleParts(arn string) (account, name string, ok bool) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "iam" || !strings.HasPrefix(parts[5], "role/") {
		return "", "", false
	}
	path := strings.Split(parts[5], "/")
	return parts[4], path[len(path)-1], true
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func randKey(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base32.StdEncoding.EncodeToString(b)[:n]
}

func randSecret(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)[:40]
}

func randToken() string {
	b := make([]byte, 600)
	_, _ = rand.Read(b)
	return "IQoJb3JpZ2luX2Vj" + base64.StdEncoding.EncodeToString(b)
}
