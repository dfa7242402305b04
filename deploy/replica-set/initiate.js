// Initiates the three-member replica set of deploy/replica-set/docker-compose.yml. Run once, on the
// first member, as its administrator:
//   MEMBERS=db1.example.org:27017,db2.example.org:27017,db3.example.org:27017 \
//   mongosh "mongodb://admin@localhost:27017/admin?directConnection=true" --file deploy/replica-set/initiate.js
const members = (process.env.MEMBERS || "").split(",").map((host) => host.trim()).filter(Boolean);
if (members.length !== 3) {
  throw new Error(`MEMBERS must list three host:port, got ${JSON.stringify(members)}`);
}
const name = process.env.MONGO_REPLICA_SET || "rs0";
const result = rs.initiate({
  _id: name,
  members: members.map((host, index) => ({ _id: index, host: host, priority: index === 0 ? 2 : 1 })),
});
printjson(result);
