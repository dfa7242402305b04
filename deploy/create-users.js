// The users of a dacapo-store database: `trainer` (readWrite: training, imports, prune, gc) and
// `viewer` (read: dashboards and the CLI's read commands). Creates them, or updates the password
// and role of an existing one; a user whose password variable is unset is left alone.
//
// Run as an administrator (the docker-compose files run it on the first start):
//   TRAINER_PASSWORD=... VIEWER_PASSWORD=... DACAPO_DB=dacapo \
//   mongosh "mongodb://admin@labdb.example.org:27017/admin?replicaSet=rs0" --file deploy/create-users.js
const database = process.env.DACAPO_DB || "dacapo";
const admin = db.getSiblingDB("admin");
for (const [user, role, variable] of [
  ["trainer", "readWrite", "TRAINER_PASSWORD"],
  ["viewer", "read", "VIEWER_PASSWORD"],
]) {
  const pwd = process.env[variable];
  if (!pwd) {
    print(`${user}: ${variable} is not set, left alone`);
    continue;
  }
  const roles = [{ role: role, db: database }];
  if (admin.getUser(user)) {
    admin.updateUser(user, { pwd: pwd, roles: roles });
    print(`${user}: updated (${role} on ${database})`);
  } else {
    admin.createUser({ user: user, pwd: pwd, roles: roles });
    print(`${user}: created (${role} on ${database})`);
  }
}
