// Package shared holds the contracts every sovkeys service uses: the message
// envelope, NATS subjects and headers, and errors with stable codes.
package shared

import (
	"errors"
	"fmt"
)

// Code is a stable, wire-visible error code. It travels between services in
// the HeaderErrorCode NATS header; the gateway maps it to an HTTP status and an
// API-specific error name in one table.
type Code string

// Stable error codes. Never rename one: they cross process boundaries.
const (
	CodeValidation           Code = "validation"
	CodeInvalidState         Code = "invalid_state"
	CodeInvalidCiphertext    Code = "invalid_ciphertext"
	CodeInvalidKeyUsage      Code = "invalid_key_usage"
	CodeAuthenticationFailed Code = "authentication_failed"
	CodeAccessDenied         Code = "access_denied"
	CodeKeyNotFound          Code = "key_not_found"
	CodeInvalidURIPath       Code = "invalid_uri_path"
	CodeMethodNotAllowed     Code = "method_not_allowed"
	CodeThrottling           Code = "throttling"
	CodeUnsupportedOperation Code = "unsupported_operation"
	CodeDependencyTimeout    Code = "dependency_timeout"
	CodeInternal             Code = "internal"
)

// Sentinel errors, one per code. Wrap them with %w, or build an *Error with
// NewError to attach a caller-facing message.
var (
	ErrValidation           = &Error{Code: CodeValidation, Message: "sovkeys: validation failed"}
	ErrInvalidState         = &Error{Code: CodeInvalidState, Message: "sovkeys: invalid state"}
	ErrInvalidCiphertext    = &Error{Code: CodeInvalidCiphertext, Message: "sovkeys: invalid ciphertext"}
	ErrInvalidKeyUsage      = &Error{Code: CodeInvalidKeyUsage, Message: "sovkeys: invalid key usage"}
	ErrAuthenticationFailed = &Error{Code: CodeAuthenticationFailed, Message: "sovkeys: authentication failed"}
	ErrAccessDenied         = &Error{Code: CodeAccessDenied, Message: "sovkeys: access denied"}
	ErrKeyNotFound          = &Error{Code: CodeKeyNotFound, Message: "sovkeys: key not found"}
	ErrInvalidURIPath       = &Error{Code: CodeInvalidURIPath, Message: "sovkeys: invalid uri path"}
	ErrMethodNotAllowed     = &Error{Code: CodeMethodNotAllowed, Message: "sovkeys: method not allowed"}
	ErrThrottling           = &Error{Code: CodeThrottling, Message: "sovkeys: throttled"}
	ErrUnsupportedOperation = &Error{Code: CodeUnsupportedOperation, Message: "sovkeys: unsupported operation"}
	ErrDependencyTimeout    = &Error{Code: CodeDependencyTimeout, Message: "sovkeys: dependency timeout"}
	ErrInternal             = &Error{Code: CodeInternal, Message: "sovkeys: internal error"}

	// ErrConfigValidation is wrapped by every Config.Validate failure.
	ErrConfigValidation = errors.New("sovkeys: invalid configuration")
)

// Error is an error with a stable code and a message safe to show a caller.
// Messages never contain secrets, plaintext or key material.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is reports whether target carries the same code, so errors.Is(err,
// shared.ErrKeyNotFound) holds for any *Error with CodeKeyNotFound.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// NewError returns an *Error with the given code and a formatted message.
func NewError(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code carried by err, or CodeInternal when err has none.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// MessageOf returns the caller-safe message of err. Errors without a code get
// a generic message so internal details never leak to callers.
func MessageOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return ErrInternal.Message
}
