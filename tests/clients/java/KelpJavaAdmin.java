// The Java AdminClient (kafka-clients 3.9) calls the partition-placement and cluster APIs
// against kelp: describeTopics (DescribeTopicPartitions since 3.8), manual assignments,
// electLeaders, partition reassignments, alterReplicaLogDirs, describeMetadataQuorum,
// client quotas and authorized operations. Prints "OK admin" on success; any mismatch throws.

import java.util.*;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.common.ElectionType;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionReplica;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.errors.*;
import org.apache.kafka.common.quota.*;

public class KelpJavaAdmin {
    static void check(boolean ok, String what) {
        if (!ok) throw new IllegalStateException("check failed: " + what);
    }

    static Throwable cause(Runnable call) {
        try {
            call.run();
        } catch (RuntimeException e) {
            return e.getCause() instanceof ExecutionException ? e.getCause().getCause() : e.getCause();
        }
        return null;
    }

    static <T> T get(org.apache.kafka.common.KafkaFuture<T> future) {
        try {
            return future.get(30, TimeUnit.SECONDS);
        } catch (Exception e) {
            throw new RuntimeException(e);
        }
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1];
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        try (Admin admin = Admin.create(props)) {
            Map<Integer, List<Integer>> assignment = Map.of(0, List.of(0), 1, List.of(0));
            get(admin.createTopics(List.of(new NewTopic(topic, assignment))).all());
            get(admin.createPartitions(Map.of(topic, NewPartitions.increaseTo(
                4, List.of(List.of(0), List.of(0))))).all());
            Throwable refused = cause(() -> get(admin.createPartitions(Map.of(topic,
                NewPartitions.increaseTo(5, List.of(List.of(2))))).all()));
            check(refused instanceof InvalidReplicaAssignmentException,
                  "assignment naming broker 2 refused: " + refused);

            TopicDescription description = get(admin.describeTopics(List.of(topic),
                new DescribeTopicsOptions().includeAuthorizedOperations(true)
                    .partitionSizeLimitPerResponse(3)).allTopicNames()).get(topic);
            check(description.partitions().size() == 4, "4 partitions over two pages");
            check(description.partitions().get(3).leader().id() == 0, "leader 0");
            check(description.authorizedOperations().containsAll(List.of(
                AclOperation.READ, AclOperation.WRITE, AclOperation.ALTER_CONFIGS)),
                "topic operations " + description.authorizedOperations());
            Set<AclOperation> clusterOps = get(admin.describeCluster(
                new DescribeClusterOptions().includeAuthorizedOperations(true))
                .authorizedOperations());
            check(clusterOps.contains(AclOperation.IDEMPOTENT_WRITE), "cluster " + clusterOps);

            TopicPartition p0 = new TopicPartition(topic, 0);
            Throwable election = cause(() -> get(admin.electLeaders(
                ElectionType.PREFERRED, Set.of(p0)).partitions()).get(p0).ifPresent(e -> {
                    throw new RuntimeException(new ExecutionException(e));
                }));
            check(election instanceof ElectionNotNeededException, "election: " + election);

            check(get(admin.listPartitionReassignments().reassignments()).isEmpty(),
                  "no reassignments");
            get(admin.alterPartitionReassignments(Map.of(p0, Optional.of(
                new NewPartitionReassignment(List.of(0))))).all());
            Throwable cancel = cause(() -> get(admin.alterPartitionReassignments(
                Map.of(p0, Optional.empty())).all()));
            check(cancel instanceof NoReassignmentInProgressException, "cancel: " + cancel);

            get(admin.alterReplicaLogDirs(Map.of(
                new TopicPartitionReplica(topic, 0, 0), "kelp")).all());
            Throwable nowhere = cause(() -> get(admin.alterReplicaLogDirs(Map.of(
                new TopicPartitionReplica(topic, 0, 0), "/elsewhere")).all()));
            check(nowhere instanceof LogDirNotFoundException, "log dir: " + nowhere);

            QuorumInfo quorum = get(admin.describeMetadataQuorum().quorumInfo());
            check(quorum.leaderId() == 0 && quorum.voters().size() == 1, "quorum " + quorum);

            ClientQuotaEntity entity = new ClientQuotaEntity(
                Map.of(ClientQuotaEntity.CLIENT_ID, topic + "-client"));
            get(admin.alterClientQuotas(List.of(new ClientQuotaAlteration(entity, List.of(
                new ClientQuotaAlteration.Op("producer_byte_rate", 1048576.0))))).all());
            Map<ClientQuotaEntity, Map<String, Double>> described = get(admin.describeClientQuotas(
                ClientQuotaFilter.containsOnly(List.of(ClientQuotaFilterComponent.ofEntity(
                    ClientQuotaEntity.CLIENT_ID, topic + "-client")))).entities());
            check(Map.of("producer_byte_rate", 1048576.0).equals(described.get(entity)),
                  "quota " + described);
            get(admin.alterClientQuotas(List.of(new ClientQuotaAlteration(entity, List.of(
                new ClientQuotaAlteration.Op("producer_byte_rate", null))))).all());
        }
        System.out.println("OK admin");
    }
}
