//go:build !unix

package helmtest

// lockFile is a no-op where flock is not available: concurrent first runs
// may both build helm, and the last rename wins.
func lockFile(string) (func(), error) { return func() {}, nil }
