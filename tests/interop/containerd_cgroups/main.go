// A small client of github.com/containerd/cgroups/v2 (Debian's
// golang-github-containerd-cgroups-dev, built in GOPATH mode) run against a dmemfs
// mount: it creates a group, enables dmem, adds a process, reads Controllers() and Stat(),
// writes and reads a dmem limit through the files, moves the process out and deletes the
// group. It prints one "key: value" line per step and exits non-zero on the first error.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	cgroupsv2 "github.com/containerd/cgroups/v2"
)

func check(step string, err error) {
	if err != nil {
		fmt.Printf("error: %s: %v\n", step, err)
		os.Exit(1)
	}
}

func main() {
	if len(os.Args) != 4 {
		fmt.Println("usage: containerd_cgroups CGROUP_ROOT PID REGION")
		os.Exit(2)
	}
	root, region := os.Args[1], os.Args[3]
	pid, err := strconv.ParseUint(os.Args[2], 10, 64)
	check("pid", err)

	m, err := cgroupsv2.NewManager(root, "/interop/job", &cgroupsv2.Resources{})
	check("NewManager", err)
	check("ToggleControllers", m.ToggleControllers([]string{"dmem"}, cgroupsv2.Enable))

	root_controllers, err := m.RootControllers()
	check("RootControllers", err)
	fmt.Printf("root controllers: %s\n", strings.Join(root_controllers, " "))
	controllers, err := m.Controllers()
	check("Controllers", err)
	fmt.Printf("controllers: %s\n", strings.Join(controllers, " "))

	check("AddProc", m.AddProc(pid))
	procs, err := m.Procs(false)
	check("Procs", err)
	fmt.Printf("procs: %v\n", procs)

	metrics, err := m.Stat()
	check("Stat", err)
	fmt.Printf("stat: ok (%T)\n", metrics)

	limit := filepath.Join(root, "interop", "job", "dmem.max")
	check("write dmem.max", os.WriteFile(limit, []byte(region+" 1G\n"), 0))
	value, err := os.ReadFile(limit)
	check("read dmem.max", err)
	fmt.Printf("dmem.max: %s", value)

	check("move out", os.WriteFile(filepath.Join(root, "cgroup.procs"),
		[]byte(strconv.FormatUint(pid, 10)), 0))
	check("Delete", m.Delete())
	_, err = os.Stat(filepath.Join(root, "interop", "job"))
	fmt.Printf("deleted: %v\n", os.IsNotExist(err))
}
